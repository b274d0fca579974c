"""Shape specs, ranges and optimization profiles: parsing and the arithmetic on them.

Accepted syntaxes (several inputs separated by commas):

* trtexec: ``input:1x3x224x224``
* Polygraphy: ``input:[1,3,224,224]``
* ranges: ``input:1x3x[128..1024:32]x[128..2048:32]`` (``min..max:step`` per axis, a plain
  number is fixed, ``[a..b]`` has step 1)

A name is split from its value at the *last* ``:`` so that names containing ``:`` survive.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from dynashape.errors import DynashapeError

Shape = tuple[int, ...]
ShapeMap = dict[str, Shape]

_RANGE_AXIS = re.compile(r"^\[\s*(\d{1,9})\s*\.\.\s*(\d{1,9})\s*(?::\s*(\d{1,9})\s*)?\]$", re.ASCII)


@dataclass(frozen=True)
class AxisRange:
    """The sizes ``min, min+step, ..., <= max`` of one axis."""

    min: int
    max: int
    step: int = 1

    @property
    def fixed(self) -> bool:
        return self.min == self.max

    def values(self) -> list[int]:
        return list(range(self.min, self.max + 1, self.step))

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
                raise DynashapeError(f"unbalanced ']' in shape spec {text!r}")
        if ch == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise DynashapeError(f"unbalanced '[' in shape spec {text!r}")
    items.append("".join(current))
    return [i.strip() for i in items if i.strip()]


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
        raise DynashapeError(f"shape {item!r} has no input name: write NAME:SHAPE{names}")
    name, value = item[:cut].strip(), item[cut + 1 :].strip()
    if not name:
        raise DynashapeError(f"shape {item!r} has an empty input name{_names_hint(valid_names)}")
    if valid_names is not None and name not in valid_names:
        raise DynashapeError(f"unknown input name {name!r}{_names_hint(valid_names)}")
    return name, value


def _names_hint(valid_names: Sequence[str] | None) -> str:
    if not valid_names:
        return ""
    return " (the model's inputs: " + ", ".join(valid_names) + ")"


_MAX_DIGITS = 9  # a dimension past 999,999,999 is a typo, not a tensor


def _parse_int(text: str, item: str) -> int:
    text = text.strip()
    # ASCII only: str.isdigit also accepts '²' and other digits int() refuses
    if not (text.isascii() and text.isdigit()):
        raise DynashapeError(
            f"cannot parse {text!r} in shape {item!r}: dimensions are non-negative integers written with "
            "ASCII digits, e.g. input:1x3x224x224 or input:[1,3,224,224]"
        )
    if len(text.lstrip("0")) > _MAX_DIGITS:
        raise DynashapeError(f"dimension {text[:12]}... in shape {item!r} is too large (at most {_MAX_DIGITS} digits)")
    return int(text)


def _parse_fixed_value(value: str, item: str) -> Shape:
    if not value:
        raise DynashapeError(f"shape {item!r} is empty: write e.g. input:1x3x224x224")
    if value.startswith("["):
        if not value.endswith("]"):
            raise DynashapeError(f"shape {item!r}: missing closing ']'")
        inner = value[1:-1].strip()
        parts = [p for p in inner.split(",")] if inner else []
    else:
        parts = value.split("x")
    return tuple(_parse_int(p, item) for p in parts)


def parse_shapes(text: str, valid_names: Sequence[str] | None = None) -> ShapeMap:
    """Parse ``name:1x3x224x224[,name2:[1,3,224,224]]`` into ``{name: shape}``."""
    result: ShapeMap = {}
    for item in _split_items(text):
        name, value = _split_name(item, valid_names)
        if name in result:
            raise DynashapeError(f"input {name!r} is given twice in {text!r}")
        shape = _parse_fixed_value(value, item)
        if any(d == 0 for d in shape):
            raise DynashapeError(f"shape {item!r} has a zero dimension")
        result[name] = shape
    if not result:
        raise DynashapeError("empty shape spec: write e.g. input:1x3x224x224")
    return result


def _parse_axis_range(text: str, item: str) -> AxisRange:
    text = text.strip()
    m = _RANGE_AXIS.match(text)
    if m:
        lo, hi, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
        if lo <= 0 or step <= 0:
            raise DynashapeError(f"range {text!r} in {item!r}: sizes and steps must be positive")
        if lo > hi:
            raise DynashapeError(
                f"range {text!r} in {item!r}: min {lo} is larger than max {hi}; write [min..max:step]"
            )
        return AxisRange(lo, hi, step)
    if text.startswith("["):
        raise DynashapeError(
            f"cannot parse axis {text!r} in {item!r}: a range is [min..max] or [min..max:step]"
        )
    v = _parse_int(text, item)
    if v == 0:
        raise DynashapeError(f"shape {item!r} has a zero dimension")
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
            raise DynashapeError(f"input {name!r} is given twice in {text!r}")
        if value.startswith("[") and ".." not in value:
            axes = tuple(AxisRange(d, d) for d in _parse_fixed_value(value, item))
        else:
            axes = tuple(_parse_axis_range(p, item) for p in _split_axes(value))
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


def iter_shapes(ranges: RangeMap) -> Iterable[ShapeMap]:
    """Every shape combination of a range map (use only for small ranges)."""
    import itertools

    names = list(ranges)
    per_input = [list(itertools.product(*(a.values() for a in ranges[n].axes))) for n in names]
    for combo in itertools.product(*per_input):
        yield {n: tuple(s) for n, s in zip(names, combo)}
