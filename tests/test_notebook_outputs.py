"""The committed notebooks' outputs are clean: no absolute paths, no warnings, no errors, no progress-bar redraws.

tests/test_notebooks.py checks that the notebooks run; this file checks what a reader of the committed
files sees (re-executed at their normal settings before each commit, outputs saved).
"""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "nbs").glob("*.ipynb"))

# Paths of one machine: a home, a checkout, a temporary folder, an installed package, a Windows drive.
ABSOLUTE_PATH = re.compile(
    r"(?<![\w.])/(?:work|root|home|Users|tmp|var|opt|usr|private|mnt)/|\.venv\b|site-packages|\b[A-Za-z]:\\"
)
# Embedded media (an audio player's WAV, an inline image in HTML) are base64, whose alphabet holds '/'.
DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=\s]*")


def _outputs(path):
    nb = json.loads(path.read_text())
    return [(i, o) for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "code" for o in cell["outputs"]]


def _texts(output):
    "Every text a reader sees in `output`: stream text, text/* and JSON data, tracebacks (images excluded)."
    if output["output_type"] == "stream":
        yield "".join(output["text"])
    for mime, data in output.get("data", {}).items():
        if mime.startswith("text/"):
            yield DATA_URI.sub("", data if isinstance(data, str) else "".join(data))
        elif mime.endswith("json"):
            yield json.dumps(data)
    yield "\n".join(output.get("traceback", []))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_normalizing_spectrograms.ipynb", "02_beyond_global_and_channel.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_outputs_were_committed(path):
    # The checks below would pass on a notebook saved without outputs: make sure there is something to check.
    outputs = [o for _, o in _outputs(path)]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} was committed without its figures"
    assert any(o["output_type"] == "stream" and o["name"] == "stdout" for o in outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_errors_or_warnings(path):
    bad = [
        (i, o["output_type"], "".join(o.get("text", "")) or o.get("ename", ""))
        for i, o in _outputs(path)
        if o["output_type"] == "error" or (o["output_type"] == "stream" and o["name"] == "stderr")
    ]
    assert not bad, f"{path.name}: errors or stderr (warnings) in cells {bad}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_absolute_paths(path):
    found = [(i, m.group()) for i, o in _outputs(path) for text in _texts(o) for m in ABSOLUTE_PATH.finditer(text)]
    assert not found, f"{path.name}: absolute paths in the outputs of cells (cell index, match): {found}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_progress_bars(path):
    # fastprogress draws its bars as HTML <progress> elements, one display (and its redraws) per bar.
    found = [i for i, o in _outputs(path) for text in _texts(o) if "<progress" in text]
    assert not found, f"{path.name}: progress bars in the outputs of cells {sorted(set(found))}"


@pytest.mark.parametrize(
    "text, dirty",
    [
        ("/work/main/.venv/lib/python3.11/site-packages/torch/jit/_script.py:1491: FutureWarning", True),
        ("saved to /root/results/x.png", True),
        ("C:\\Users\\me\\data", True),
        ("data/synthetic-1s/audio/1-100-A-0.wav", False),
        ("results in results/notebook/ (3 runs)", False),
        ("tone_440 0.9250 1/5", False),
    ],
)
def test_absolute_path_pattern(text, dirty):
    assert bool(ABSOLUTE_PATH.search(text)) == dirty
