"""Property-based tests of the shape-spec parser: user text either parses or is a one-line
DynashapeError, never another exception; what is formatted parses back; ranges enumerate
inside their bounds."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("hypothesis")  # a test dependency; the GPU machine's TensorRT Python lacks it

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dynashape.errors import DynashapeError
from dynashape.shapes import (
    MAX_AXES,
    MAX_DIGITS,
    AxisRange,
    ShapeRange,
    count_shapes,
    format_ranges,
    format_shapes,
    iter_shapes,
    parse_ranges,
    parse_shapes,
)

# a short run in `make test`; DYNASHAPE_FUZZ_EXAMPLES=100000 for a long one
FUZZ = settings(max_examples=int(os.environ.get("DYNASHAPE_FUZZ_EXAMPLES", "400")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# the characters specs are made of, plus the ones users paste by mistake (Unicode digits, dashes)
_SPEC_ALPHABET = st.sampled_from([*"0123456789x[],:.- ", "..", "input", "²", "٢", "\u00a0", "×", "\n", "-1"])
spec_text = st.one_of(
    st.text(max_size=80),  # anything at all
    st.lists(_SPEC_ALPHABET, max_size=40).map("".join),  # near-misses of real specs
)
NAMES = ["input", "mask:0"]


def _parses_or_refuses(parse: object, text: str, names: list[str] | None) -> None:
    try:
        parse(text, names)  # type: ignore[operator]
    except DynashapeError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) < 1000, message


@FUZZ
@given(text=spec_text, named=st.booleans())
@example(text="input:1x3x²²⁴x224", named=True)
@example(text="input:1x3x" + "9" * 5000 + "x224", named=True)
@example(text="input:" + "x".join(["1"] * 5000), named=True)
@example(text="input:[1..9" + "9" * 5000 + "]x3", named=True)
@example(text="input:[" + ",".join(["2"] * 5000) + "]", named=False)
@example(text="]][[", named=False)
@example(text="input:[1..2]x[", named=True)
@example(text=":", named=False)
def test_any_text_parses_or_is_a_one_line_error(text: str, named: bool) -> None:
    names = NAMES if named else None
    _parses_or_refuses(parse_shapes, text, names)
    _parses_or_refuses(parse_ranges, text, names)


# names real exporters write: letters, digits, '.', '_', '/', ':' (ONNX's 'input:0', 'onnx::Conv_0')
_name = st.from_regex(r"[A-Za-z_/][A-Za-z0-9_./:]{0,15}", fullmatch=True).filter(lambda s: not s.endswith(":"))
_size = st.integers(1, 10**MAX_DIGITS - 1)
_shape = st.lists(_size, min_size=1, max_size=MAX_AXES).map(tuple)


@FUZZ
@given(st.dictionaries(_name, _shape, min_size=1, max_size=5))
def test_format_then_parse_shapes_round_trips(shapes: dict[str, tuple[int, ...]]) -> None:
    assert parse_shapes(format_shapes(shapes)) == shapes
    assert parse_shapes(format_shapes(shapes), list(shapes)) == shapes


@st.composite
def _axis_range(draw: st.DrawFn) -> AxisRange:
    lo = draw(st.integers(1, 10**6))
    hi = draw(st.integers(lo, lo + 10**6))
    step = draw(st.integers(1, 10**4))
    return AxisRange(lo, hi, step)


_ranges = st.dictionaries(_name, st.lists(_axis_range(), min_size=1, max_size=6).map(lambda a: ShapeRange(tuple(a))),
                          min_size=1, max_size=3)


@FUZZ
@given(_ranges)
def test_format_then_parse_ranges_round_trips(ranges: dict[str, ShapeRange]) -> None:
    def sizes(rm: dict[str, ShapeRange]) -> dict[str, list[tuple[int, int, int]]]:
        # a fixed axis is written as its size, whatever its step: the same sizes, step 1
        return {n: [(a.min, a.max, 1 if a.fixed else a.step) for a in r.axes] for n, r in rm.items()}

    assert sizes(parse_ranges(format_ranges(ranges))) == sizes(ranges)


@st.composite
def _small_ranges(draw: st.DrawFn) -> dict[str, ShapeRange]:
    def axis() -> AxisRange:
        lo = draw(st.integers(1, 300))
        return AxisRange(lo, draw(st.integers(lo, lo + 40)), draw(st.integers(1, 50)))

    return {name: ShapeRange(tuple(axis() for _ in range(draw(st.integers(1, 3)))))
            for name in draw(st.lists(_name, min_size=1, max_size=2, unique=True))}


@FUZZ
@given(_small_ranges())
def test_ranges_enumerate_within_their_bounds(ranges: dict[str, ShapeRange]) -> None:
    limit = 20_000
    if count_shapes(ranges) > limit:  # refused at the call, before any shape is made
        with pytest.raises(DynashapeError, match="too many to enumerate"):
            iter_shapes(ranges, limit=limit)
        return
    shapes = list(iter_shapes(ranges, limit=limit))
    assert len(shapes) == count_shapes(ranges) == len({format_shapes(s) for s in shapes})
    for s in shapes:
        assert set(s) == set(ranges)
        for name, shape in s.items():
            rng = ranges[name]
            assert rng.contains(shape)
            assert all(a.min <= d <= a.max for a, d in zip(rng.axes, shape))
    for name, rng in ranges.items():  # the ends of each axis are reached; max only when on the step
        assert any(s[name] == rng.min_shape for s in shapes)
        last = tuple(a.values()[-1] for a in rng.axes)
        assert any(s[name] == last for s in shapes)


@given(st.integers(2, 40))
@settings(max_examples=20, deadline=None)
def test_enumerating_a_huge_range_is_refused_not_attempted(axes: int) -> None:
    ranges = {"input": ShapeRange(tuple(AxisRange(1, 999_999_999) for _ in range(axes)))}
    with pytest.raises(DynashapeError, match="too many to enumerate"):
        iter_shapes(ranges)
