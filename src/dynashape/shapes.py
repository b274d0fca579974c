"""Shape specs, ranges and optimization profiles: parsing and the arithmetic on them.

Accepted syntaxes (several inputs separated by commas):

* trtexec: ``input:1x3x224x224``
* Polygraphy: ``input:[1,3,224,224]``
* ranges: ``input:1x3x[128..1024:32]x[128..2048:32]`` (``min..max:step`` per axis, a plain
  number is fixed, ``[a..b]`` has step 1)

A name is split from its value at the *last* ``:`` so that names containing ``:`` survive.

Specs are user input and bounded: ASCII digits only, at most ``MAX_DIGITS`` digits per size,
``MAX_AXES`` axes per input and ``MAX_INPUTS`` inputs per spec; anything else is a
``DynashapeError`` with one line saying what is wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from dynashape.errors import DynashapeError

Shape = tuple[int, ...]
ShapeMap = dict[str, Shape]

MAX_DIGITS = 9  # a dimension past 999,999,999 is a typo, not a tensor
MAX_AXES = 32  # ONNX sets no limit; TensorRT stops at 8, real models at about 6
MAX_INPUTS = 1024  # decoders with a KV cache have a few hundred
MAX_ENUMERATED = 1_000_000  # iter_shapes: a sweep past this many shapes needs a coarser step

_RANGE_AXIS = re.compile(r"^\[\s*(\d+)\s*\.\.\s*(\d+)\s*(?::\s*(\d+)\s*)?\]$", re.ASCII)


@dataclass(frozen=True)
class AxisRange:
    """The sizes ``min, min+step, ..., <= max`` of one axis."""

    min: int
    max: int
    step: int = 1

    @property
    def fixed(self) -> bool:
        return self.min == self.max

    def values(self) -> range:
        """The sizes, lazily: a range of a billion sizes costs nothing until iterated."""
        return range(self.min, self.max + 1, self.step)

    @property
    def count(self) -> int:
        return len(self.values())

    def contains(self, size: int) -> bool:
        return self.min <= size <= self.max and (size - self.min) % self.step == 0

    def __str__(self) -> str:
        if self.fixed:
            return str(self.min)
        step = f":{self.step}" if self.step != 1 else ""
        return f"[{self.min}..{self.max}{step}]"


@dataclass(frozen=True)
class ShapeRange:
    """A range of shapes for one input: one ``AxisRange`` per axis."""

    axes: tuple[AxisRange, ...]

    @property
    def min_shape(self) -> Shape:
        return tuple(a.min for a in self.axes)

    @property
    def max_shape(self) -> Shape:
        return tuple(a.max for a in self.axes)

    @property
    def dynamic_axes(self) -> list[int]:
        return [i for i, a in enumerate(self.axes) if not a.fixed]

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.axes) and all(
            a.contains(s) for a, s in zip(self.axes, shape)
        )

    def __str__(self) -> str:
        return "x".join(str(a) for a in self.axes)


RangeMap = dict[str, ShapeRange]


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def format_shapes(shapes: ShapeMap) -> str:
    return ",".join(f"{name}:{format_shape(s)}" for name, s in shapes.items())


def format_ranges(ranges: RangeMap) -> str:
    """The spec :func:`parse_ranges` reads back into ``ranges``."""
    return ",".join(f"{name}:{rng}" for name, rng in ranges.items())


def _split_items(text: str) -> list[str]:
    """Split at commas that are not inside brackets."""
    items: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise DynashapeError(f"unbalanced ']' in shape spec {_short(text)}")
        if ch == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise DynashapeError(f"unbalanced '[' in shape spec {_short(text)}")
    items.append("".join(current))
    out = [i.strip() for i in items if i.strip()]
    if len(out) > MAX_INPUTS:
        raise DynashapeError(f"shape spec {_short(text)} names {len(out)} inputs; at most {MAX_INPUTS}")
    return out


def _short(text: str, limit: int = 60) -> str:
    """``text`` quoted for an error line, cut in the middle when long (a spec may be megabytes)."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[: limit // 2]) + f" ... ({len(text)} characters) ... " + repr(text[-limit // 4 :])


def _split_name(item: str, valid_names: Sequence[str] | None) -> tuple[str, str]:
    """Split ``name:value`` at the last ':' outside brackets (range steps use ':' inside)."""
    depth = 0
    cut = -1
    for i, ch in enumerate(item):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == ":" and depth == 0:
            cut = i
    if cut < 0:
        if valid_names is not None and len(valid_names) == 1:
            return valid_names[0], item
        names = _names_hint(valid_names)
        raise DynashapeError(f"shape {_short(item)} has no input name: write NAME:SHAPE{names}")
    name, value = item[:cut].strip(), item[cut + 1 :].strip()
    if not name:
        raise DynashapeError(f"shape {_short(item)} has an empty input name{_names_hint(valid_names)}")
    if valid_names is not None and name not in valid_names:
        raise DynashapeError(f"unknown input name {_short(name, 40)}{_names_hint(valid_names)}")
    return name, value


def _names_hint(valid_names: Sequence[str] | None) -> str:
    if not valid_names:
        return ""
    return " (the model's inputs: " + ", ".join(valid_names) + ")"


def _parse_int(text: str, item: str) -> int:
    text = text.strip()
    # ASCII only: str.isdigit also accepts '²' and other digits int() refuses
    if not (text.isascii() and text.isdigit()):
        hint = " (a size is positive)" if text.startswith("-") else ""
        raise DynashapeError(
            f"cannot parse {_short(text, 24)} in shape {_short(item)}{hint}: sizes are whole numbers written "
            "with ASCII digits, e.g. input:1x3x224x224 or input:[1,3,224,224]"
        )
    return _bounded(text, item)


def _bounded(digits: str, item: str) -> int:
    """``int(digits)`` for at most MAX_DIGITS significant digits (int() of 5,000 digits raises)."""
    if len(digits.lstrip("0")) > MAX_DIGITS:
        raise DynashapeError(
            f"size {digits.lstrip('0')[:12]}... ({len(digits.lstrip('0'))} digits) in shape {_short(item)} is too "
            f"large: at most {MAX_DIGITS} digits"
        )
    return int(digits)


def _check_axes(count: int, item: str) -> None:
    if count > MAX_AXES:
        raise DynashapeError(f"shape {_short(item)} has {count} axes; at most {MAX_AXES}")


def _parse_fixed_value(value: str, item: str) -> Shape:
    if not value:
        raise DynashapeError(f"shape {_short(item)} is empty: write e.g. input:1x3x224x224")
    if value.startswith("["):
        if not value.endswith("]"):
            raise DynashapeError(f"shape {_short(item)}: missing closing ']'")
        inner = value[1:-1].strip()
        parts = inner.split(",") if inner else []
    else:
        parts = value.split("x")
    _check_axes(len(parts), item)
    if not parts:
        raise DynashapeError(f"shape {_short(item)} has no axes: write e.g. input:[1,3,224,224]")
    return tuple(_parse_int(p, item) for p in parts)


def parse_shapes(text: str, valid_names: Sequence[str] | None = None) -> ShapeMap:
    """Parse ``name:1x3x224x224[,name2:[1,3,224,224]]`` into ``{name: shape}``."""
    result: ShapeMap = {}
    for item in _split_items(text):
        name, value = _split_name(item, valid_names)
        if name in result:
            raise DynashapeError(f"input {_short(name, 40)} is given twice in {_short(text)}")
        shape = _parse_fixed_value(value, item)
        if any(d == 0 for d in shape):
            raise DynashapeError(f"shape {_short(item)} has a zero dimension; sizes are at least 1")
        result[name] = shape
    if not result:
        raise DynashapeError("empty shape spec: write e.g. input:1x3x224x224")
    return result


def _parse_axis_range(text: str, item: str) -> AxisRange:
    text = text.strip()
    m = _RANGE_AXIS.match(text)
    if m:
        lo, hi = _bounded(m.group(1), item), _bounded(m.group(2), item)
        step = _bounded(m.group(3), item) if m.group(3) is not None else 1
        if lo <= 0 or step <= 0:
            raise DynashapeError(
                f"range {_short(text, 40)} in {_short(item)}: sizes and steps are at least 1, e.g. [128..1024:32]"
            )
        if lo > hi:
            raise DynashapeError(
                f"range {_short(text, 40)} in {_short(item)}: min {lo} is larger than max {hi}; write [min..max:step]"
            )
        return AxisRange(lo, hi, step)
    if text.startswith("[") or ".." in text:
        raise DynashapeError(
            f"cannot parse axis {_short(text, 40)} in {_short(item)}: a range is [min..max] or [min..max:step] "
            "with whole numbers, e.g. [128..1024:32]"
        )
    v = _parse_int(text, item)
    if v == 0:
        raise DynashapeError(f"shape {_short(item)} has a zero dimension; sizes are at least 1")
    return AxisRange(v, v, 1)


def _split_axes(value: str) -> list[str]:
    """Split ``1x3x[128..1024:32]x[128..2048:32]`` at the 'x' outside brackets."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in value:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "x" and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def parse_ranges(text: str, valid_names: Sequence[str] | None = None) -> RangeMap:
    """Parse ``input:1x3x[128..1024:32]x[128..2048:32]`` (fixed shapes are accepted too)."""
    result: RangeMap = {}
    for item in _split_items(text):
        name, value = _split_name(item, valid_names)
        if name in result:
            raise DynashapeError(f"input {_short(name, 40)} is given twice in {_short(text)}")
        if not value:
            raise DynashapeError(f"range {_short(item)} is empty: write e.g. input:1x3x[128..1024:32]x512")
        if value.startswith("[") and ".." not in value:
            shape = _parse_fixed_value(value, item)
            if any(d == 0 for d in shape):
                raise DynashapeError(f"shape {_short(item)} has a zero dimension; sizes are at least 1")
            axes = tuple(AxisRange(d, d) for d in shape)
        else:
            parts = _split_axes(value)
            _check_axes(len(parts), item)
            axes = tuple(_parse_axis_range(p, item) for p in parts)
        result[name] = ShapeRange(axes)
    if not result:
        raise DynashapeError("empty range spec: write e.g. input:1x3x[128..1024:32]x[128..1024:32]")
    return result


@dataclass
class InputProfile:
    min: Shape
    opt: Shape
    max: Shape

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max)
        )


@dataclass
class Profile:
    """One optimization profile: min/opt/max per input, checked min <= opt <= max."""

    inputs: dict[str, InputProfile] = field(default_factory=dict)

    def add(self, name: str, min: Sequence[int], opt: Sequence[int], max: Sequence[int]) -> Profile:
        lo, mid, hi = tuple(min), tuple(opt), tuple(max)
        if not (len(lo) == len(mid) == len(hi)):
            raise DynashapeError(
                f"profile for {name!r}: min {format_shape(lo)}, opt {format_shape(mid)} and "
                f"max {format_shape(hi)} have different ranks"
            )
        for axis, (a, b, c) in enumerate(zip(lo, mid, hi)):
            if not a <= b <= c:
                raise DynashapeError(
                    f"profile for {name!r}: axis {axis} must satisfy min <= opt <= max, got "
                    f"{a} / {b} / {c} (min {format_shape(lo)}, opt {format_shape(mid)}, "
                    f"max {format_shape(hi)})"
                )
        self.inputs[name] = InputProfile(lo, mid, hi)
        return self

    def contains(self, shapes: ShapeMap) -> bool:
        return all(name in self.inputs and self.inputs[name].contains(s) for name, s in shapes.items())

    def __iter__(self) -> Iterator[tuple[str, InputProfile]]:
        return iter(self.inputs.items())

    def __str__(self) -> str:
        return "; ".join(
            f"{n}: {format_shape(p.min)} / {format_shape(p.opt)} / {format_shape(p.max)}"
            for n, p in self.inputs.items()
        )

    def as_options(self) -> str:
        """The profile as dynashape build / trtexec options."""
        parts = []
        for key in ("min", "opt", "max"):
            shapes = ",".join(f"{n}:{format_shape(getattr(p, key))}" for n, p in self.inputs.items())
            parts.append(f"--{key} {shapes}")
        return " ".join(parts)

    def to_json(self) -> dict[str, dict[str, list[int]]]:
        return {
            n: {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)}
            for n, p in self.inputs.items()
        }

    @classmethod
    def from_json(cls, data: dict[str, dict[str, list[int]]]) -> Profile:
        prof = cls()
        for name, p in data.items():
            prof.add(name, p["min"], p["opt"], p["max"])
        return prof


def make_profile(
    min_shapes: ShapeMap, opt_shapes: ShapeMap | None, max_shapes: ShapeMap
) -> Profile:
    """Build a profile from three shape maps (trtexec's --minShapes/--optShapes/--maxShapes)."""
    opt_shapes = opt_shapes or {}
    names = list(min_shapes)
    for name in list(max_shapes) + list(opt_shapes):
        if name not in min_shapes:
            raise DynashapeError(f"input {name!r} has no --min shape; give min, opt and max for every input")
    profile = Profile()
    for name in names:
        if name not in max_shapes:
            raise DynashapeError(f"input {name!r} has no --max shape; give min, opt and max for every input")
        opt = opt_shapes.get(name) or tuple(
            (a + b) // 2 for a, b in zip(min_shapes[name], max_shapes[name])
        )
        profile.add(name, min_shapes[name], opt, max_shapes[name])
    return profile


def ranges_to_profile(ranges: RangeMap, opt: ShapeMap | None = None) -> Profile:
    """A profile spanning a range map; opt defaults to the middle of each axis, on its step."""
    profile = Profile()
    for name, rng in ranges.items():
        if opt and name in opt:
            mid = opt[name]
        else:
            mid = tuple(
                a.min + ((a.max - a.min) // 2 // a.step) * a.step for a in rng.axes
            )
        profile.add(name, rng.min_shape, mid, rng.max_shape)
    return profile


def count_shapes(ranges: RangeMap) -> int:
    """How many shapes :func:`iter_shapes` yields."""
    return math.prod(a.count for rng in ranges.values() for a in rng.axes)


def _count_text(n: int) -> str:
    return f"{n:,}" if n < 10**12 else f"about 10^{len(str(n)) - 1}"


def iter_shapes(ranges: RangeMap, limit: int = MAX_ENUMERATED) -> Iterator[ShapeMap]:
    """Every shape combination of a range map, lazily; more than ``limit`` is refused at the call
    (give a coarser step)."""
    import itertools

    total = count_shapes(ranges)
    if total > limit:
        raise DynashapeError(
            f"the range {_short(format_ranges(ranges), 120)} holds {_count_text(total)} shapes, too many to enumerate "
            f"(at most {limit}); give a coarser step, e.g. [128..1024:32]"
        )
    names = list(ranges)
    per_input = [itertools.product(*(a.values() for a in ranges[n].axes)) for n in names]
    return ({n: tuple(s) for n, s in zip(names, combo)} for combo in itertools.product(*per_input))
