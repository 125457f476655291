"""Generation of a latent video model's codes, written once for every temporal model:
the context through the temporal model, then one frame at a time; a transformer,
whose length is bounded by `max_frames`, slides its window past it as TECO's sampler
(and ConvSSM's transformer sampler) do, a recurrence (ConvS5) just keeps stepping.

Sliding (`wilson1yan/teco` `teco/models/sample.py`): once the video fills the
window, the model re-reads the last frames (the posterior over their codes, the
temporal model over them) and generates the next frame from there. TECO re-reads the
last `max_frames - 1` frames for every frame (`stride = 1`, a whole window's work per
frame); a `stride` of `s` re-reads the last `max_frames - s` frames once and generates
`s` frames from that read with the key/value cache, so the re-read costs `1/s` per
frame (the frames right after a re-read see `s - 1` fewer frames of history than
TECO's).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int, PRNGKeyArray

from ..nn._temporal_core import AbstractTemporalCore, TransformerCore

# (window codes (W, h, w), actions (W + 1,) of those frames and the next, index of the
# window's first frame in the video) → the temporal model's inputs for the window.
WindowInputs = Callable[[Array, Array, Array], Array]
# (temporal output predicting a frame, key) → (what the next input is built from, the
# frame's codes (h, w)).
SampleFrame = Callable[[Array, PRNGKeyArray], tuple[Any, Array]]
# (that, the frame's codes, actions (2,) of the frame and the next, index of the frame
# in the video) → the temporal model's input for the frame.
NextInput = Callable[[Any, Array, Array, Array], Array]


def check_window(owner: str, n_context: int, max_frames: int, stride: int) -> None:
    """A context must leave room in the window, and a stride must leave a window."""
    if n_context >= max_frames:
        raise ValueError(
            f"{owner}.generate: the context has {n_context} frames, but the temporal "
            f"transformer's window holds max_frames = {max_frames}; give at most "
            f"{max_frames - 1} context frames (the last ones) or a model with a larger "
            "max_frames."
        )
    if not 1 <= stride < max_frames:
        raise ValueError(
            f"{owner}: `slide_stride` must be in [1, max_frames) = [1, {max_frames}); got {stride}."
        )


def windowed_rollout(
    owner: str,
    temporal: AbstractTemporalCore,
    context: Int[Array, "context code_height code_width"],
    actions: Int[Array, " total"],
    num_steps: int,
    *,
    key: PRNGKeyArray,
    window_inputs: WindowInputs,
    sample_frame: SampleFrame,
    next_input: NextInput,
    max_frames: int | None,
    stride: int = 1,
    cache: bool = True,
) -> Int[Array, "{num_steps} code_height code_width"]:
    """The `num_steps` frames' codes after `context` (`actions` covers context and
    generated frames), the whole rollout one jitted program (`lax.scan`, no Python
    loop per frame).

    `max_frames=None`: the temporal model is a recurrence and generates any number of
    frames from one read of the context. Otherwise the first frames come from the
    context's read until the video fills `max_frames`, then the window slides by
    `stride` (see the module docstring). `cache=False` re-runs the transformer over its
    whole window for every frame (`TransformerCore.uncached_step`), as TECO's sampler
    does; the frames are the same.
    """
    n_ctx = context.shape[0]
    keys = jax.random.split(key, num_steps)
    if not cache and not isinstance(temporal, TransformerCore):
        raise ValueError(
            f"{owner}.generate: cache=False re-runs a transformer; this model's temporal "
            f"model is {type(temporal).__name__}, which steps its state."
        )

    def read_and_generate(codes, start, width: int, length: int, keys):
        """Read `codes[start : start + width]`, generate `length` frames after them."""
        window = jax.lax.dynamic_slice_in_dim(codes, start, width)
        inputs = window_inputs(
            window, jax.lax.dynamic_slice_in_dim(actions, start, width + 1), start
        )
        steps = jnp.arange(length, dtype=jnp.int32)

        def made(y, j, k):
            carried, frame = sample_frame(y, k)
            index = start + width + j
            x = next_input(carried, frame, jax.lax.dynamic_slice_in_dim(actions, index, 2), index)
            return x, frame

        if cache:
            state, ys = temporal.prefill(temporal.init_state(width + length), inputs)

            def cached(carry, xs):
                state, y = carry
                x, frame = made(y, *xs)
                state, y = temporal.step(state, x, width + xs[0])
                return (state, y), frame

            return jax.lax.scan(cached, (state, ys[-1]), (steps, keys))[1]
        transformer = temporal
        assert isinstance(transformer, TransformerCore)
        buffer = jnp.zeros((width + length,) + inputs.shape[1:], inputs.dtype)
        buffer = jax.lax.dynamic_update_slice_in_dim(buffer, inputs, 0, 0)

        def rerun(buffer, xs):
            y = transformer.uncached_step(buffer, width - 1 + xs[0])
            x, frame = made(y, *xs)
            return jax.lax.dynamic_update_index_in_dim(buffer, x, width + xs[0], 0), frame

        return jax.lax.scan(rerun, buffer, (steps, keys))[1]

    zero = jnp.zeros((), jnp.int32)
    if max_frames is None:
        return read_and_generate(context, zero, n_ctx, num_steps, keys)
    check_window(owner, n_ctx, max_frames, stride)
    first = min(num_steps, max_frames - n_ctx)
    out = read_and_generate(context, zero, n_ctx, first, keys[:first])
    rest = num_steps - first
    if rest == 0:
        return out
    # Past the window: the video so far in one buffer, re-read every `stride` frames.
    width = max_frames - stride
    video = jnp.zeros((n_ctx + num_steps,) + context.shape[1:], context.dtype)
    video = jax.lax.dynamic_update_slice_in_dim(video, context, 0, 0)
    video = jax.lax.dynamic_update_slice_in_dim(video, out, n_ctx, 0)
    done = n_ctx + first  # frames in the video before the sliding part
    rounds, last = divmod(rest, stride)

    def slide(video, xs):
        r, round_keys = xs
        start = done + r * stride - width
        frames = read_and_generate(video, start, width, stride, round_keys)
        return jax.lax.dynamic_update_slice_in_dim(video, frames, start + width, 0), None

    round_keys = keys[first : first + rounds * stride].reshape(rounds, stride)
    video, _ = jax.lax.scan(slide, video, (jnp.arange(rounds, dtype=jnp.int32), round_keys))
    if last:
        start = done + rounds * stride - width
        frames = read_and_generate(video, jnp.asarray(start, jnp.int32), width, last, keys[-last:])
        video = jax.lax.dynamic_update_slice_in_dim(video, frames, start + width, 0)
    return video[n_ctx:]
