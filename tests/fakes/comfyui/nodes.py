"""Node implementations of the fake: cheap, pure-Python, writing real PNGs."""

from __future__ import annotations

import json
import os
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

try:
    from .folders import ModelPaths
    from .pngfile import Image, NotAnImage, decode_png, encode_png
except ImportError:  # run as a script
    from folders import ModelPaths
    from pngfile import Image, NotAnImage, decode_png, encode_png


class NamedError(Exception):
    """An exception reported with a foreign type name (e.g. ``torch.OutOfMemoryError``)."""

    def __init__(self, type_name: str, message: str):
        super().__init__(message)
        self.type_name = type_name


def full_type_name(exc: BaseException) -> str:
    if isinstance(exc, NamedError):
        return exc.type_name
    module = type(exc).__module__
    name = type(exc).__qualname__
    return name if module in (None, "builtins") else f"{module}.{name}"


@dataclass
class UpscaleModel:
    path: str
    scale: int = 2


@dataclass
class Latent:
    width: int
    height: int
    batch: int


@dataclass
class NodeContext:
    """What a node may use: folders, the graph, and an async progress reporter."""

    node_id: str
    prompt: dict
    extra_data: dict
    input_dir: Path
    output_dir: Path
    temp_dir: Path
    paths: ModelPaths
    progress: Callable[[int, int, bytes | None], Awaitable[None]]


Batch = list[Image]
NodeFn = Callable[[NodeContext, dict[str, Any]], Awaitable[tuple[tuple, dict | None]]]


def _solid(w: int, h: int, color: int) -> Image:
    px = bytes(((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF))
    return Image(w, h, px * (w * h))


def _scale(img: Image, w: int, h: int) -> Image:
    if (w, h) == (img.width, img.height):
        return img
    src, sw = img.data, img.width
    xs = [(x * img.width // w) * 3 for x in range(w)]
    rows = []
    for y in range(h):
        base = (y * img.height // h) * sw * 3
        rows.append(b"".join(src[base + x:base + x + 3] for x in xs))
    return Image(w, h, b"".join(rows))


_INVERT = bytes(255 - i for i in range(256))


async def empty_image(ctx: NodeContext, i: dict) -> tuple[tuple, None]:
    img = _solid(i["width"], i["height"], i.get("color", 0))
    return ([img] * i["batch_size"],), None


async def image_invert(ctx: NodeContext, i: dict) -> tuple[tuple, None]:
    return ([Image(im.width, im.height, im.data.translate(_INVERT)) for im in i["image"]],), None


async def image_scale(ctx: NodeContext, i: dict) -> tuple[tuple, None]:
    out = []
    for im in i["image"]:
        w, h = i["width"], i["height"]
        if w == 0 and h == 0:
            out.append(im)
            continue
        if w == 0:
            w = max(1, round(im.width * h / im.height))
        if h == 0:
            h = max(1, round(im.height * w / im.width))
        out.append(_scale(im, w, h))
    return (out,), None


async def image_blur(ctx: NodeContext, i: dict) -> tuple[tuple, None]:
    return (list(i["image"]),), None  # the cost is simulated by the fault knobs (node/class delay)


def _counter(folder: Path, filename: str) -> int:
    pat = re.compile(re.escape(filename) + r"_(\d+)_")
    best = 0
    if folder.is_dir():
        for name in os.listdir(folder):
            m = pat.match(name)
            if m:
                best = max(best, int(m.group(1)))
    return best + 1


def _save(ctx: NodeContext, images: Batch, prefix: str, base: Path, type_: str, level: int) -> dict:
    subfolder, filename = os.path.split(os.path.normpath(prefix))
    folder = (base / subfolder).resolve()
    if os.path.commonpath((str(base.resolve()), str(folder))) != str(base.resolve()):
        raise Exception("**** ERROR: Saving image outside the output folder is not allowed."
                        f"\n full_output_folder: {folder}\n         output_dir: {base}")
    folder.mkdir(parents=True, exist_ok=True)
    counter = _counter(folder, filename)
    text = {"prompt": json.dumps(ctx.prompt)}
    for k, v in (ctx.extra_data.get("extra_pnginfo") or {}).items():
        text[k] = json.dumps(v)
    results = []
    for img in images:
        name = f"{filename}_{counter:05}_.png"
        tmp = folder / f".{name}.incomplete"
        tmp.write_bytes(encode_png(img, text=text, compress_level=level))
        os.replace(tmp, folder / name)
        results.append({"filename": name, "subfolder": subfolder, "type": type_})
        counter += 1
    return {"images": results}


async def save_image(ctx: NodeContext, i: dict) -> tuple[tuple, dict]:
    return (), _save(ctx, i["images"], i.get("filename_prefix", "ComfyUI"), ctx.output_dir, "output", 4)


async def preview_image(ctx: NodeContext, i: dict) -> tuple[tuple, dict]:
    prefix = "ComfyUI_temp_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))
    return (), _save(ctx, i["images"], prefix, ctx.temp_dir, "temp", 1)


async def save_image_websocket(ctx: NodeContext, i: dict) -> tuple[tuple, None]:
    images = i["images"]
    for n, img in enumerate(images):
        await ctx.progress(n, len(images), encode_png(img, compress_level=1))
    return (), None


async def load_image(ctx: NodeContext, i: dict) -> tuple[tuple, None]:
    path = ctx.input_dir / i["image"]
    try:
        img = decode_png(path.read_bytes())
    except NotAnImage:
        raise NamedError("PIL.UnidentifiedImageError", f"cannot identify image file '{path}'") from None
    mask = Image(img.width, img.height, b"\x00" * img.width * img.height * 3)
    return ([img], [mask]), None


async def upscale_model_loader(ctx: NodeContext, i: dict) -> tuple[tuple, None]:
    name = i["model_name"]
    path = ctx.paths.resolve("upscale_models", name)
    if path is None:
        raise FileNotFoundError(f"Model in folder 'upscale_models' with filename '{name}' not found.")
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if b"body.0.weight" not in head:
        raise NamedError("spandrel.__helpers.registry.UnsupportedModelError", "")
    return (UpscaleModel(path),), None


async def image_upscale_with_model(ctx: NodeContext, i: dict) -> tuple[tuple, None]:
    model: UpscaleModel = i["upscale_model"]
    out = []
    for img in i["image"]:
        out.append(_scale(img, img.width * model.scale, img.height * model.scale))
    await ctx.progress(1, 1, None)
    return (out,), None


async def checkpoint_loader(ctx: NodeContext, i: dict) -> tuple[tuple, None]:
    path = ctx.paths.resolve("checkpoints", i["ckpt_name"])
    if path is None:
        raise FileNotFoundError(f"Model in folder 'checkpoints' with filename '{i['ckpt_name']}' not found.")
    return (("MODEL", path), ("CLIP", path), ("VAE", path)), None


async def empty_latent(ctx: NodeContext, i: dict) -> tuple[tuple, None]:
    return (Latent(i["width"], i["height"], i["batch_size"]),), None


async def clip_text_encode(ctx: NodeContext, i: dict) -> tuple[tuple, None]:
    return (("CONDITIONING", i.get("text", "")),), None


async def ksampler(ctx: NodeContext, i: dict) -> tuple[tuple, None]:
    steps = int(i.get("steps", 1))
    for s in range(steps):
        await ctx.progress(s + 1, steps, None)
    return (i["latent_image"],), None


async def vae_decode(ctx: NodeContext, i: dict) -> tuple[tuple, None]:
    lat: Latent = i["samples"]
    return ([_solid(lat.width, lat.height, 0x808080)] * lat.batch,), None


NODES: dict[str, NodeFn] = {
    "EmptyImage": empty_image,
    "ImageInvert": image_invert,
    "ImageScale": image_scale,
    "ImageBlur": image_blur,
    "SaveImage": save_image,
    "PreviewImage": preview_image,
    "SaveImageWebsocket": save_image_websocket,
    "LoadImage": load_image,
    "UpscaleModelLoader": upscale_model_loader,
    "ImageUpscaleWithModel": image_upscale_with_model,
    "CheckpointLoaderSimple": checkpoint_loader,
    "EmptyLatentImage": empty_latent,
    "CLIPTextEncode": clip_text_encode,
    "KSampler": ksampler,
    "VAEDecode": vae_decode,
}


def load_image_check(input_dir: Path) -> Callable[[str, str, Any], "bool | str | None"]:
    """LoadImage's VALIDATE_INPUTS: the file must exist (replaces the combo check)."""

    def check(class_type: str, name: str, value: Any) -> "bool | str | None":
        if class_type in ("LoadImage", "LoadImageMask") and name == "image":
            p = (input_dir / str(value)).resolve()
            if str(value).startswith("/") or ".." in str(value) or not p.is_file():
                return f"Invalid image file: {value}"
            return True
        return None

    return check
