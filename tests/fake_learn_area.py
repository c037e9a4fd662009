"""A stand-in for ``python -m training.learn_area`` that speaks its protocol, for the plugin's tests.

Copied into a temporary "checkout" as ``training/learn_area.py``. It writes its
argv to ``$SATSEG_FAKE_ARGV`` and behaves as ``$SATSEG_FAKE_MODE`` says:

- ``ok``: progress lines of every phase (with noise that is not JSON), then
  writes the model (a copy of ``$SATSEG_FAKE_MODEL``), report.csv and card.md
  into ``--out`` and prints the ``done`` line;
- ``error``: ``error: ...`` on stderr, exit 2;
- ``crash``: a traceback, exit 1;
- ``slow``: one line, then waits; SIGTERM removes ``--out`` and exits 130;
- ``stubborn``: like ``slow`` but ignores SIGTERM (must be killed).
"""

import json
import os
import shutil
import signal
import sys
import time


def out_dir() -> str:
    return sys.argv[sys.argv.index("--out") + 1]


def say(**obj: object) -> None:
    print(json.dumps(obj), flush=True)


def main() -> int:
    with open(os.environ["SATSEG_FAKE_ARGV"], "w") as f:
        json.dump(sys.argv[1:], f)
    mode = os.environ.get("SATSEG_FAKE_MODE", "ok")
    out = out_dir()
    if mode == "error":
        print("error: no OpenStreetMap feature of any class in the extent", file=sys.stderr)
        return 2
    if mode == "crash":
        raise RuntimeError("a bug in the training code")
    if mode in ("slow", "stubborn"):

        def on_term(signum: int, frame: object) -> None:
            shutil.rmtree(out, ignore_errors=True)
            print("stopped cleanly", file=sys.stderr, flush=True)
            os._exit(130)

        signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else on_term)
        os.makedirs(os.path.join(out, "dataset"), exist_ok=True)
        say(phase="dataset", fraction=0.05, message="tiles 1/20")
        time.sleep(120)
        return 0
    os.makedirs(out, exist_ok=True)
    say(phase="dataset", fraction=0.1, message="tiles 20/20")
    print("a library's warning printed on stdout", flush=True)
    print("a progress bar on stderr\r", file=sys.stderr, flush=True)
    say(phase="train", fraction=0.4, message="epoch 1", epoch=1, val_iou=0.41, seconds_left=75)
    say(phase="train", fraction=0.7, message="epoch 2", epoch=2, val_iou=0.563, seconds_left=8)
    say(phase="export", fraction=0.85, message="parity checked")
    say(phase="score", fraction=0.95, message="held-out block")
    model = os.path.join(out, "area.onnx")
    shutil.copy(os.environ["SATSEG_FAKE_MODEL"], model)
    report = os.path.join(out, "report.csv")
    with open(report, "w") as f:
        f.write("class,iou_before,iou_after\nbackground,0.81,0.9\nbuilding,0.3125,0.6250\n")
    card = os.path.join(out, "area.md")
    with open(card, "w") as f:
        f.write("# area\n")
    verdict = "held-out mIoU 76.2 %, below the base model's 80.0 %: the base does better"
    say(phase="done", fraction=1.0, message="done", model=model, report=report, card=card, verdict=verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
