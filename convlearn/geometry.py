"""Which input pixels an output pixel sees, and how to line two outputs up.

A VALID convolution shrinks the image, and a model and a target transform shrink it by different
amounts. To compare them pixel by pixel both are cropped to the input region they both cover.
Each operator is described by a :class:`Footprint`: how many pixels it removes along each axis and
where output pixel 0 sits in the input. Positions are kept doubled so that the half-pixel centre
of an even kernel stays an integer.
"""

from __future__ import annotations

from dataclasses import dataclass

from convlearn.errors import ConvlearnError

Pair = tuple[int, int]


@dataclass(frozen=True)
class Footprint:
    """How an operator maps input pixels to output pixels, per axis (rows, cols).

    ``shrink``: output size = input size - shrink. ``shift2``: twice the input position of the
    centre of output pixel 0 (a 2x2 VALID kernel has its centre at 0.5, so shift2 = 1).
    ``extent``: the receptive field, the input pixels one output pixel depends on.
    """

    shrink: Pair = (0, 0)
    shift2: Pair = (0, 0)
    extent: Pair = (1, 1)

    def then(self, other: Footprint) -> Footprint:
        """The footprint of applying ``self`` and then ``other``."""
        return Footprint(
            shrink=_add(self.shrink, other.shrink),
            shift2=_add(self.shift2, other.shift2),
            extent=(self.extent[0] + other.extent[0] - 1, self.extent[1] + other.extent[1] - 1),
        )


def _add(a: Pair, b: Pair) -> Pair:
    return (a[0] + b[0], a[1] + b[1])


def conv(kernel_size: Pair, padding: str = "valid", dilation: Pair = (1, 1)) -> Footprint:
    """Footprint of one stride-1 convolution; 'same' pads like TensorFlow (extra pixel after)."""
    span = tuple((k - 1) * d for k, d in zip(kernel_size, dilation))
    if padding == "valid":
        return Footprint(shrink=span, shift2=span, extent=tuple(s + 1 for s in span))
    if padding == "same":
        # TF pads floor(span/2) before and the rest after, so an even span leaves a half pixel.
        return Footprint(shrink=(0, 0), shift2=tuple(s % 2 for s in span), extent=tuple(s + 1 for s in span))
    raise ConvlearnError(f"padding must be 'valid' or 'same', got '{padding}'")


def chain(footprints: list[Footprint]) -> Footprint:
    """Footprint of applying several operators in order."""
    total = Footprint()
    for footprint in footprints:
        total = total.then(footprint)
    return total


@dataclass(frozen=True)
class Crops:
    """Slices (rows, cols) that cut the model's and the target's outputs to the same pixels, and
    the input pixels at their centres (rounded down where the centres fall between pixels)."""

    model: tuple[slice, slice]
    target: tuple[slice, slice]
    inputs: tuple[slice, slice]

    @property
    def shape(self) -> Pair:
        rows, cols = self.model
        return (rows.stop - rows.start, cols.stop - cols.start)


def align(model: Footprint, target: Footprint, image_shape: Pair) -> Crops:
    """Crop both outputs to the input region they both cover, or say why they cannot be."""
    for axis in (0, 1):
        if image_shape[axis] - model.shrink[axis] < 1:
            raise ConvlearnError(
                f"image is too small for the model: {image_shape[0]}x{image_shape[1]} pixels, but "
                f"the model's receptive field is {model.extent[0]}x{model.extent[1]}"
            )
        if image_shape[axis] - target.shrink[axis] < 1:
            raise ConvlearnError(
                f"image is too small for the target: {image_shape[0]}x{image_shape[1]} pixels, but "
                f"the target shrinks it by {target.shrink[0]}x{target.shrink[1]}"
            )
        if (model.shift2[axis] - target.shift2[axis]) % 2:
            raise ConvlearnError(
                "model and target outputs are half a pixel apart: the model shrinks the image by "
                f"{model.shrink[0]}x{model.shrink[1]} pixels and the target by "
                f"{target.shrink[0]}x{target.shrink[1]}; their difference must be even "
                "(change the model's kernel size by one or the target's padding)"
            )
    model_slices, target_slices, input_slices = [], [], []
    for axis in (0, 1):
        start2 = max(model.shift2[axis], target.shift2[axis])
        stop2 = min(
            model.shift2[axis] + 2 * (image_shape[axis] - model.shrink[axis]),
            target.shift2[axis] + 2 * (image_shape[axis] - target.shrink[axis]),
        )
        length = (stop2 - start2) // 2
        if length < 1:
            raise ConvlearnError(
                f"image {image_shape[0]}x{image_shape[1]} is too small: the model's and the "
                "target's outputs share no pixels"
            )
        model_start = (start2 - model.shift2[axis]) // 2
        target_start = (start2 - target.shift2[axis]) // 2
        model_slices.append(slice(model_start, model_start + length))
        target_slices.append(slice(target_start, target_start + length))
        input_slices.append(slice(start2 // 2, start2 // 2 + length))
    return Crops(model=tuple(model_slices), target=tuple(target_slices), inputs=tuple(input_slices))
