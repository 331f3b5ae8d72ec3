"""Settings given as text: '2:2:1' split ratios, 'size:epochs' resize stages, 'ALL=all' label maps."""

from __future__ import annotations

from noisystudent.errors import ConfigError


def parse_split_ratio(text: str) -> tuple[float, float, float]:
    """'2:2:1' (or '2,2,1') -> (2.0, 2.0, 1.0): labelled : masked : validation."""
    try:
        parts = tuple(float(x) for x in text.replace(",", ":").split(":"))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise ConfigError(f"--split-ratio must look like 2:2:1 (labelled:masked:validation); got {text!r}.")
    return parts


def parse_progressive_resize(spec: str | None, epochs: int, image_size: int) -> list[int]:
    """Image size of every epoch: 'size:epochs,size:epochs' stages, the last stage extended to the end."""
    if not spec:
        return [image_size] * epochs
    sizes: list[int] = []
    for stage in spec.split(","):
        try:
            size, count = (int(part) for part in stage.split(":"))
        except ValueError:
            raise ConfigError(f"progressive_resize stage {stage!r} is not 'size:epochs'.") from None
        if size > image_size or size < 8 or count < 1:
            raise ConfigError(f"progressive_resize stage {stage!r} needs 8 <= size <= image_size ({image_size}) and epochs >= 1.")
        sizes += [size] * count
    sizes = sizes[:epochs]
    return sizes + [sizes[-1]] * (epochs - len(sizes))


def parse_label_map(spec: str) -> dict[str, str]:
    """'ALL=all, Hem=hem' -> {'ALL': 'all', 'Hem': 'hem'} (keys keep their spaces only inside)."""
    mapping = {}
    for part in spec.split(","):
        source, equals, target = part.partition("=")
        if not equals or not source.strip() or not target.strip():
            raise ConfigError(f"label_map must look like 'ALL=all,Hem=hem'; got {spec!r}.")
        mapping[source.strip()] = target.strip()
    return mapping
