"""The TTY progress line, and the fake Hub's API route as huggingface_hub's own client sees it."""

import io

from builder.models.progress import TtyProgress


def test_tty_progress_shows_bytes_per_second():
    out = io.StringIO()
    board = TtyProgress(out, interval=0)
    task = board.start("model.safetensors", "downloading", 4 * 1024 * 1024)
    task.update(2 * 1024 * 1024)
    task.close()
    text = out.getvalue()
    assert "downloading model.safetensors 2.0 MiB/4.0 MiB" in text and "/s" in text and text.endswith("done\n")


def test_fake_hub_api_answers_huggingface_hub_client(hub):
    from huggingface_hub import HfApi

    commit = hub.add_repo("org/repo", {"a.bin": b"x" * 2000, "cfg.json": b"{}"})
    info = HfApi(endpoint=hub.url).model_info("org/repo")
    assert info.sha == commit
    assert sorted(s.rfilename for s in info.siblings) == ["a.bin", "cfg.json"]


def test_log_progress_says_it_is_still_working(caplog):
    import logging

    from builder.models.progress import LogProgress

    caplog.set_level(logging.INFO, logger="builder.models.progress")
    task = LogProgress(interval=0).start("big.safetensors", "downloading", 10 * 1024 * 1024)
    task.update(5 * 1024 * 1024)
    assert "still downloading big.safetensors 5.0 MiB/10.0 MiB" in caplog.text
