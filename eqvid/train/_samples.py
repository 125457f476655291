"""Sample export a person can look at: PNG strips and animated GIFs."""

import pathlib

import numpy as np
from jaxtyping import Float
from PIL import Image, ImageDraw


def to_uint8(video: Float[np.ndarray, "... channels"]) -> np.ndarray:
    """`[-1, 1]` floats → `uint8` (the file boundary of the tensor convention)."""
    return np.clip(np.round((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _rgb(frames: np.ndarray) -> np.ndarray:
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def _row(frames: np.ndarray, gap: int) -> np.ndarray:
    t, h, w, c = frames.shape
    out = np.full((h, t * w + (t - 1) * gap, c), 255, np.uint8)
    for i, f in enumerate(frames):
        out[:, i * (w + gap) : i * (w + gap) + w] = f
    return out


def _tint(frames: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """Colour the bright pixels of grayscale-as-RGB frames (to tell the bands apart)."""
    f = frames.astype(np.float32) / 255.0
    return np.clip(f * np.asarray(color, np.float32), 0, 255).astype(np.uint8)


def save_prediction_strip(
    path: str | pathlib.Path,
    context: Float[np.ndarray, "batch context height width channels"],
    prediction: Float[np.ndarray, "batch horizon height width channels"],
    truth: Float[np.ndarray, "batch horizon height width channels"],
    *,
    gap: int = 2,
) -> pathlib.Path:
    """Write a PNG: per example, one row `context | prediction | ground truth`.

    Context frames are white, predictions green, ground truth orange, so the
    three bands read at a glance.
    """
    rows = []
    for ctx, pred, gt in zip(to_uint8(context), to_uint8(prediction), to_uint8(truth)):
        bands = [
            _row(_rgb(ctx), gap),
            _row(_tint(_rgb(pred), (120, 255, 120)), gap),
            _row(_tint(_rgb(gt), (255, 170, 60)), gap),
        ]
        h = bands[0].shape[0]
        sep = np.full((h, 4 * gap + 2, 3), 255, np.uint8)
        sep[:, 2 * gap : 2 * gap + 2] = 128
        rows.append(np.concatenate([bands[0], sep, bands[1], sep, bands[2]], axis=1))
    header = 14
    width = max(r.shape[1] for r in rows)
    canvas = np.full((header + sum(r.shape[0] + gap for r in rows), width, 3), 255, np.uint8)
    y = header
    for r in rows:
        canvas[y : y + r.shape[0], : r.shape[1]] = r
        y += r.shape[0] + gap
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    t_ctx, t_pred = context.shape[1], prediction.shape[1]
    w = context.shape[3] + gap
    sep = 4 * gap + 2
    x_pred = t_ctx * w - gap + sep
    x_true = x_pred + t_pred * w - gap + sep
    for x, label in ((0, f"context ({t_ctx})"), (x_pred, "prediction"), (x_true, "ground truth")):
        draw.text((x + 2, 1), label, fill=(0, 0, 0))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def save_prediction_gif(
    path: str | pathlib.Path,
    context: Float[np.ndarray, "batch context height width channels"],
    prediction: Float[np.ndarray, "batch horizon height width channels"],
    truth: Float[np.ndarray, "batch horizon height width channels"],
    *,
    fps: int = 5,
    scale: int = 2,
) -> pathlib.Path:
    """Write an animated GIF: each example as `model | ground truth` side by side;
    during the context both show the real frames (white), then the model's
    frames (green) next to the truth (orange)."""
    ctx, pred, gt = to_uint8(context), to_uint8(prediction), to_uint8(truth)
    model_side = np.concatenate([_rgb(ctx), _tint(_rgb(pred), (120, 255, 120))], axis=1)
    truth_side = np.concatenate([_rgb(ctx), _tint(_rgb(gt), (255, 170, 60))], axis=1)
    _b, t, h, _w, _ = model_side.shape
    frames = []
    for i in range(t):
        tiles = [
            np.concatenate([m[i], np.full((h, 2, 3), 128, np.uint8), g[i]], axis=1)
            for m, g in zip(model_side, truth_side)
        ]
        sep = np.full((2, tiles[0].shape[1], 3), 255, np.uint8)
        grid = np.concatenate([x for tile in tiles for x in (tile, sep)][:-1], axis=0)
        frames.append(
            Image.fromarray(grid).resize(
                (grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST
            )
        )
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=1000 // fps, loop=0)
    return path


def save_video_strip(
    path: str | pathlib.Path,
    videos: Float[np.ndarray, "batch time height width channels"],
    *,
    label: str = "",
    gap: int = 2,
) -> pathlib.Path:
    """Write a PNG: one row of frames per video (`[-1, 1]` floats), under `label`."""
    rows = [_row(_rgb(v), gap) for v in to_uint8(videos)]
    header = 14 if label else 0
    h, width = rows[0].shape[:2]
    canvas = np.full((header + len(rows) * (h + gap), width, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        canvas[header + i * (h + gap) : header + i * (h + gap) + h] = r
    image = Image.fromarray(canvas)
    if label:
        ImageDraw.Draw(image).text((2, 1), label, fill=(0, 0, 0))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def save_reconstruction_strip(
    path: str | pathlib.Path,
    inputs: Float[np.ndarray, "batch time height width channels"],
    reconstructions: Float[np.ndarray, "batch time height width channels"],
    *,
    gap: int = 2,
    label: str = "input (white) / reconstruction (green)",
) -> pathlib.Path:
    """Write a PNG: per example, the input frames (white) with the tokenizer's
    reconstructions (green) in the row below, frame under frame, under `label`."""
    if inputs.shape != reconstructions.shape:
        raise ValueError(
            f"save_reconstruction_strip: `reconstructions` must have the inputs' shape "
            f"{inputs.shape}, got {reconstructions.shape}."
        )
    rows = []
    for x, y in zip(to_uint8(inputs), to_uint8(reconstructions)):
        rows.append(_row(_rgb(x), gap))
        rows.append(_row(_tint(_rgb(y), (120, 255, 120)), gap))
    header = 14
    width = rows[0].shape[1]
    h = rows[0].shape[0]
    canvas = np.full((header + len(rows) * (h + gap) + (len(rows) // 2) * 2 * gap, width, 3), 255)
    canvas = canvas.astype(np.uint8)
    y = header
    for i, r in enumerate(rows):
        canvas[y : y + h] = r
        y += h + gap + (2 * gap if i % 2 else 0)  # a wider gap between examples
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    draw.text((2, 1), label, fill=(0, 0, 0))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


_SLOT_COLOURS = np.array(
    [
        [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
    ],
    np.float32,
)  # fmt: skip


def save_slot_strip(
    path: str | pathlib.Path,
    videos: Float[np.ndarray, "batch time height width channels"],
    masks: Float[np.ndarray, "batch time slots height width"],
    *,
    gap: int = 2,
) -> pathlib.Path:
    """Write a PNG of how an object-centric model splits frames into slots: per video,
    a row of frames (`[-1, 1]`), a row of the segmentation (each pixel in the colour
    of its largest slot, brightness its share), then one row per slot: the frames
    weighted by that slot's mask (what the slot holds)."""
    if masks.shape[:2] != videos.shape[:2] or masks.shape[3:] != videos.shape[2:4]:
        raise ValueError(
            f"save_slot_strip: `masks` must be (batch, time, slots, height, width) = "
            f"{videos.shape[:2]} + (slots,) + {videos.shape[2:4]}; got {masks.shape}."
        )
    frames = _rgb(to_uint8(videos)).astype(np.float32)
    m = np.clip(np.asarray(masks, np.float32), 0.0, 1.0)
    k = m.shape[2]
    colours = _SLOT_COLOURS[np.arange(k) % len(_SLOT_COLOURS)]
    rows, labels = [], []
    for b in range(videos.shape[0]):
        seg = np.take(colours, np.argmax(m[b], axis=1), axis=0) * np.max(m[b], axis=1)[..., None]
        rows.append(_row(frames[b].astype(np.uint8), gap))
        labels.append("frames")
        rows.append(_row(np.clip(seg, 0, 255).astype(np.uint8), gap))
        labels.append("slots")
        for s in range(k):
            part = frames[b] * m[b, :, s, ..., None]
            rows.append(_row(np.clip(part, 0, 255).astype(np.uint8), gap))
            labels.append(f"slot {s}")
    label_w = 48
    h, width = rows[0].shape[0], rows[0].shape[1] + label_w
    canvas = np.full((len(rows) * (h + gap), width, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        canvas[i * (h + gap) : i * (h + gap) + h, label_w:] = r
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for i, label in enumerate(labels):
        draw.text((2, i * (h + gap) + max(0, h // 2 - 6)), label, fill=(0, 0, 0))
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
