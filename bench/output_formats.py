"""Output formats: bytes and worker time per format for one 1024x1024 output, ratios against png.

    python bench/output_formats.py [--runs 5] [--size 1024] [--quality 90]

The source is what ComfyUI's SaveImage writes: a PNG at compress_level 4. Two contents, both made
here (no model can run on this box): "photo-like" (smooth colour fields, a fractal and sensor-like
noise, close to a diffusion model's output in how it compresses) and "flat" (gradients only, like
UI art). Each format goes through the worker's own path, ``FormatSink`` over ``Base64Sink``: png
ships ComfyUI's bytes unchanged (the baseline of each content, measured in the same run); webp and
jpeg are re-encoded with Pillow first. Time is the median of ``--runs`` calls, decode + encode +
base64 included; the last column is what re-encoding adds to png's time (base64 only).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image, ImageChops, ImageFilter  # noqa: E402

from rp_handler.encode import FormatSink  # noqa: E402
from rp_handler.outputs import Base64Sink, OutputFile  # noqa: E402

FORMATS = ("png", "webp", "jpeg")


def flat(size: int) -> Image.Image:
    g = Image.linear_gradient("L").resize((size, size))
    return Image.merge("RGB", (g, g.rotate(90), g.rotate(200)))


def photo_like(size: int) -> Image.Image:
    fields = flat(size).filter(ImageFilter.GaussianBlur(size / 64))
    fractal = Image.effect_mandelbrot((size, size), (-2.0, -1.25, 0.75, 1.25), 200)
    tint = Image.merge("RGB", (fractal, fractal.rotate(90), ImageChops.invert(fractal)))
    base = Image.blend(fields, tint.filter(ImageFilter.GaussianBlur(1.2)), 0.45)
    noise = Image.merge("RGB", [Image.effect_noise((size, size), 9) for _ in range(3)])
    return ImageChops.add(base, ImageChops.subtract(noise, Image.new("RGB", (size, size), (128,) * 3)))


def comfy_png(im: Image.Image) -> bytes:
    out = io.BytesIO()
    im.save(out, format="PNG", compress_level=4)  # ComfyUI SaveImage's setting
    return out.getvalue()


def measure(png: bytes, fmt: str, quality: int, runs: int) -> tuple[int, int, float]:
    item = OutputFile(node="9", kind="images", index=0, filename="ComfyUI_00001_.png", subfolder="", type="output")
    times, res = [], {}
    for _ in range(runs):
        t0 = time.perf_counter()
        res = FormatSink(Base64Sink(1 << 40), fmt, quality).put(item, png)
        times.append(time.perf_counter() - t0)
    return res["size"], len(res["data"]), statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args(argv)
    print(f"{args.size}x{args.size} output, quality {args.quality} (webp, jpeg), median of {args.runs} runs")
    print(f"{'content':<11} {'format':<6} {'bytes':>10} {'base64':>10} {'ms':>8} {'bytes vs png':>13} "
          f"{'ms added vs png':>16}")
    for name, make in (("photo-like", photo_like), ("flat", flat)):
        png = comfy_png(make(args.size))
        base = None
        for fmt in FORMATS:
            size, b64, sec = measure(png, fmt, args.quality, args.runs)
            base = base or (size, sec)
            print(f"{name:<11} {fmt:<6} {size:>10,} {b64:>10,} {sec * 1e3:>8.1f} {size / base[0]:>12.3f}x "
                  f"{(sec - base[1]) * 1e3:>+16.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
