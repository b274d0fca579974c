"""Real torchvision models, exported the way users do, are correct: no DS001/DS002/DS005 finding.

Each model is exported once (legacy exporter, opset 17, batch/height/width dynamic, 1x3x128x128,
random weights) and checked with the export shape given and estimated.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from dynashape.model import load_model  # noqa: E402
from dynashape.pipeline.check import CheckReport, check_model  # noqa: E402

EXPORT = (1, 3, 128, 128)
HAZARDS = {"DS001", "DS002", "DS005"}

# name -> (module, minimum H/W). Every net here is valid at every size from its minimum (no
# join constrains the size: classifiers end in global pooling, the segmentation heads resize to
# Shape(input)). The minima: padded convs and pools shrink any size >= 1 to >= 1, except
# squeezenet1_0: conv 7x7/2 without padding gives a = (H-7)//2 + 1, then three MaxPool 3x3/2 in
# ceil mode, out = ceil((n-3)/2) + 1, each needing an input >= 2 (a window may hang over the end):
# the third needs c >= 2 from the second, so b >= 4, so a >= 8, so H >= 21 (eager: 20 fails, 21
# runs; the probe once called windows larger than their input invalid in ceil mode too: 29).
MODELS: dict[str, tuple[str, int]] = {
    "resnet18": ("classification", 1),
    "mobilenet_v3_small": ("classification", 1),
    "efficientnet_b0": ("classification", 1),
    "squeezenet1_0": ("classification", 21),
    "shufflenet_v2_x0_5": ("classification", 1),
    "regnet_y_400mf": ("classification", 1),
    "lraspp_mobilenet_v3_large": ("segmentation", 1),
    "deeplabv3_mobilenet_v3_large": ("segmentation", 1),
}


def _export(name: str, kind: str, path: Path) -> None:
    from dynashape.testing import import_torchvision

    tv = import_torchvision()
    if kind == "segmentation":
        net = getattr(tv.models.segmentation, name)(weights=None, weights_backbone=None)
    else:
        net = getattr(tv.models, name)(weights=None)
    torch.manual_seed(0)
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (torch.randn(*EXPORT),), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch"}},
        )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("torchvision")
    paths = {}
    for name, (kind, _) in MODELS.items():
        paths[name] = directory / f"{name}.onnx"
        _export(name, kind, paths[name])
    return paths


@pytest.fixture(scope="module")
def reports(exported: dict[str, Path]) -> dict[tuple[str, bool], CheckReport]:
    out = {}
    for name, path in exported.items():
        model = load_model(path)
        out[(name, True)] = check_model(model, export_shape={"input": EXPORT}, path=str(path))
        out[(name, False)] = check_model(model, path=str(path))
    return out


def _summary(report: CheckReport) -> str:
    rules = sorted({f.rule for f in report.findings}) or ["none"]
    lat = ", ".join(f"{a}: min {x.min} x{x.multiple}" for a, x in sorted(report.lattice["input"].items()))
    return f"rules {rules}; lattice {lat}"


@pytest.mark.parametrize("given", [True, False], ids=["export_shape", "estimated"])
@pytest.mark.parametrize("name", list(MODELS))
def test_correct_model_has_no_hazard_findings(name: str, given: bool,
                                              reports: dict[tuple[str, bool], CheckReport]) -> None:
    report = reports[(name, given)]
    print(f"{name} ({'given' if given else 'estimated ' + str(report.export_shape['input'])}): {_summary(report)}")
    hazards = [(f.rule, f.node, f.message) for f in report.findings if f.rule in HAZARDS]
    assert hazards == []
    assert report.applied == []
    if given:
        assert report.export_shape == {"input": EXPORT}


@pytest.mark.parametrize("name", list(MODELS))
def test_lattice_of_correct_models(name: str, reports: dict[tuple[str, bool], CheckReport]) -> None:
    report = reports[(name, True)]
    _, minimum = MODELS[name]
    lattice = {a: (x.min, x.multiple) for a, x in report.lattice["input"].items()}
    assert lattice == {0: (1, 1), 2: (minimum, 1), 3: (minimum, 1)}
    assert [f for f in report.findings if f.rule == "DS003"] == []


def test_the_rules_did_look_at_the_candidate_nodes(reports: dict[tuple[str, bool], CheckReport]) -> None:
    # negatives must come from an examined node, not from a rule that never ran
    seg = reports[("deeplabv3_mobilenet_v3_large", True)]
    assert {r.reason for r in seg.refusals if r.rule == "DS002"} == {"its output size follows the input size"}
    res = reports[("resnet18", True)]
    (pool,) = [r for r in res.refusals if r.rule == "DS001"]
    assert "kernel [3, 3] is not the size of a dynamic axis" in pool.reason and "1x64x64x64" in pool.reason
    shuffle = reports[("shufflenet_v2_x0_5", True)]
    assert any("stays valid" in r.reason for r in shuffle.refusals if r.rule == "DS005")
