"""Fixed-shape chunk sampling: the prefix pass and the denoising loop compiled, or replayed as CUDA graphs.

At batch 1 a GPU spends most of a chunk waiting for the host to launch its thousands of small kernels. The
cure is to record the chunk once and replay it, which needs a chunk whose every tensor has a shape fixed by
the configuration and whose kernels never wait for the host:

* variable-length inputs are padded to the configured maxima (the prompt to ``tokenizer_max_length``), the
  padding masked as in a batch of prompts of different lengths, so any instruction gives the same shapes;
* nothing inside the chunk reads a device value on the host (a family's ``encode_prefix(...,
  fixed_shapes=True)`` skips such shortcuts) or copies from the host: the Euler times live in a device
  tensor (:func:`flow_matching.euler_denoise`) and the noise is copied into a fixed buffer first.

:class:`FixedShapeSampler` runs a flow-matching family's prefix and steps that way: eager (the reference),
compiled (``torch.compile(fullgraph=True)``: one graph each, no breaks), and/or recorded as two CUDA graphs
(the prefix pass; all denoising steps of a chunk) that every later chunk replays with new inputs copied into
the recorded buffers. With CUDA graphs the prefix lives in the graphs' memory: one prefix at a time, a later
``encode`` overwrites it, and a stale prefix is refused (:meth:`FixedShapeSampler.check_current`).
:class:`FixedShapeExecution` gives a policy ``set_execution`` on top of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from hlrp_ros.policies.common import flow_matching

#: Calls before a recording: lazy initialisation (cuBLAS workspaces, position-id caches, compiled kernels'
#: autotuning) must not happen inside it.
WARMUP_CALLS = 2


def pad_to_length(tensor: Tensor, length: int) -> Tensor:
    """Zero-pads ``(B, L)`` along ``L`` to ``length`` (ids 0, masks False); refuses a longer one."""
    if tensor.shape[1] > length:
        raise ValueError(f"{tensor.shape[1]} tokens exceed the fixed length {length}")
    return torch.nn.functional.pad(tensor, (0, length - tensor.shape[1]))


def capture_cuda_graph(fn: Callable[[], Any], pool: Any | None = None) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Warms ``fn`` up on a side stream, then records one call of it as a CUDA graph.

    Returns:
        ``(graph, outputs)``: ``graph.replay()`` recomputes ``outputs`` in place from the tensors ``fn`` read
        (recording runs nothing: ``outputs`` hold their values after the first replay).
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(WARMUP_CALLS):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        outputs = fn()
    return graph, outputs


def _copy_into(static: list, inputs: list) -> None:
    """Copies each input tensor (nested in lists like the prefix inputs) into its recorded buffer."""
    for dst, src in zip(static, inputs, strict=True):
        if isinstance(dst, list):
            _copy_into(dst, src)
        elif isinstance(dst, Tensor):
            dst.copy_(src, non_blocking=True)


def _clone(inputs: list) -> list:
    return [_clone(x) if isinstance(x, list) else x.clone() if isinstance(x, Tensor) else x for x in inputs]


def _layout(inputs: list) -> tuple:
    return tuple(_layout(x) if isinstance(x, list) else None if x is None else (tuple(x.shape), x.dtype)
                 for x in inputs)


class FixedShapeSampler:
    """A flow-matching family's prefix pass and denoising loop with fixed shapes (see the module docstring).

    Args:
        model: The networks, on their device and in their dtype: ``encode_prefix(*inputs, fixed_shapes=True)``
            returns a dataclass prefix with ``batch_size`` and ``fixed_generation`` fields, ``denoise_step(prefix,
            x_t, t)`` a velocity.
        pad_inputs: The family's padding of its prefix inputs to fixed shapes.
        compile: Compile the prefix pass and the denoising step (``torch.compile(fullgraph=True, dynamic=False)``):
            True for inductor, or the name of another ``torch.compile`` backend.
        cuda_graphs: Record the prefix pass and each step count's denoising loop as CUDA graphs (a CUDA model).
    """

    def __init__(self, model: nn.Module, pad_inputs: Callable[[list], list], compile: bool | str = False,
                 cuda_graphs: bool = False) -> None:
        device = next(model.parameters()).device
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs needs the model on a CUDA device; it is on {device}")
        self.device = device
        self.pad_inputs = pad_inputs
        self.compiled = compile
        self.cuda_graphs = cuda_graphs
        self._prefix_fn: Callable[..., Any] = model.encode_prefix
        self._step_fn: Callable[..., Tensor] = model.denoise_step
        if compile:
            backend = "inductor" if compile is True else compile
            self._prefix_fn = torch.compile(self._prefix_fn, fullgraph=True, dynamic=False, backend=backend)
            self._step_fn = torch.compile(self._step_fn, fullgraph=True, dynamic=False, backend=backend)
        self._layout: tuple | None = None  # input shapes the graphs were recorded for
        self._static_inputs: list | None = None
        self._prefix_graph: torch.cuda.CUDAGraph | None = None
        self._prefix: Any = None
        self._static_noise: Tensor | None = None
        self._step_graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor]] = {}
        #: Increases with every ``encode``; a prefix remembers the value it was made with.
        self.generation = 0

    def encode(self, inputs: list) -> Any:
        """The prefix of a family's model inputs, marked with this sampler's generation.

        With CUDA graphs, a layout other than the recorded one (another batch or image size) records anew.
        """
        inputs = self.pad_inputs(inputs)
        self.generation += 1
        if not self.cuda_graphs:
            prefix = self._prefix_fn(*inputs, fixed_shapes=True)
        else:
            if self._layout != _layout(inputs):
                self._record_prefix(inputs)
            _copy_into(self._static_inputs, inputs)
            self._prefix_graph.replay()
            prefix = self._prefix
        return dataclasses.replace(prefix, fixed_generation=self.generation)

    def sample(self, prefix: Any, noise: Tensor, num_steps: int) -> Tensor:
        """Normalised actions ``(B, C, A)`` from ``noise`` (float32, on the device) in ``num_steps`` Euler steps.

        With CUDA graphs the result lives in the graphs' memory until the next ``sample``: copy it out.
        """
        self.check_current(prefix)
        if not self.cuda_graphs:
            times = flow_matching.euler_time_tensor(num_steps, self.device)
            return flow_matching.euler_denoise(self._step_fn, prefix, noise, times)
        if self._static_noise is None:
            self._static_noise = noise.clone()
        elif self._static_noise.shape != noise.shape:
            raise ValueError(f"noise must have shape {tuple(self._static_noise.shape)}, got {tuple(noise.shape)}")
        self._static_noise.copy_(noise, non_blocking=True)
        entry = self._step_graphs.get(num_steps)
        if entry is None:
            times = flow_matching.euler_time_tensor(num_steps, self.device)
            static_prefix, static_noise = self._prefix, self._static_noise
            entry = capture_cuda_graph(
                lambda: flow_matching.euler_denoise(self._step_fn, static_prefix, static_noise, times),
                pool=self._prefix_graph.pool(),
            )
            self._step_graphs[num_steps] = entry
        entry[0].replay()  # a recording computes nothing: the first chunk is a replay too
        return entry[1]

    def check_current(self, prefix: Any) -> None:
        """Refuses a prefix whose buffers a later ``encode`` overwrote (CUDA graphs keep one prefix)."""
        if prefix.fixed_generation is None:
            raise ValueError("this prefix was not made by the fixed-shape sampler")
        if self.cuda_graphs and prefix.fixed_generation != self.generation:
            raise ValueError(f"this prefix (encode {prefix.fixed_generation}) was overwritten by encode "
                             f"{self.generation}: with CUDA graphs sample each prefix before encoding the next")

    def _record_prefix(self, inputs: list) -> None:
        """Records the prefix pass for this layout (the step graphs recorded against the old one go)."""
        self._step_graphs.clear()
        self._static_noise = None
        self._static_inputs = _clone(inputs)
        static = self._static_inputs
        self._prefix_graph, self._prefix = capture_cuda_graph(lambda: self._prefix_fn(*static, fixed_shapes=True))
        self._layout = _layout(inputs)


class FixedShapeExecution:
    """``set_execution`` for a flow-matching policy whose networks ``model`` a :class:`FixedShapeSampler` can run.

    The policy pads its inputs in :meth:`fixed_shape_inputs`, encodes through :meth:`_encode_inputs` and samples
    unguided chunks through :meth:`_sample_unguided`; guided (real-time chunking) steps run eager on the same
    prefix.
    """

    _fixed: FixedShapeSampler | None = None

    def fixed_shape_inputs(self, inputs: list) -> list:
        """The family's prefix inputs padded to fixed shapes."""
        raise NotImplementedError

    def set_execution(self, compile: bool | str = False, cuda_graphs: bool = False) -> None:
        """Fixed-shape execution: compiled (True: inductor; or a ``torch.compile`` backend's name) and/or replayed
        as CUDA graphs; both False: eager.

        The first chunk after this (and after a new layout or step count) compiles or records, so it is slow;
        the actions equal the eager ones within float tolerance.
        """
        self._fixed = (FixedShapeSampler(self.model, self.fixed_shape_inputs, compile, cuda_graphs)
                       if compile or cuda_graphs else None)

    def _renew_execution(self) -> None:
        """After a move or cast: recorded graphs and compiled code belong to the old device and dtype."""
        if self._fixed is not None:
            self.set_execution(compile=self._fixed.compiled, cuda_graphs=self._fixed.cuda_graphs)

    def _encode_inputs(self, inputs: list) -> Any:
        return self.model.encode_prefix(*inputs) if self._fixed is None else self._fixed.encode(inputs)

    def _sample_unguided(self, prefix: Any, noise: Tensor | None, generator: torch.Generator | None,
                         num_steps: int | None) -> Tensor:
        if prefix.fixed_generation is None:
            return self.model.sample_from_prefix(prefix, noise=noise, num_steps=num_steps, generator=generator)
        x = self.model._noise(prefix.batch_size, self.device, noise, generator)
        return self._fixed.sample(prefix, x, num_steps or self.config.num_steps)

    def _check_prefix(self, prefix: Any) -> None:
        if prefix.fixed_generation is not None:
            if self._fixed is None:
                raise ValueError("this prefix was encoded for fixed-shape execution, which set_execution turned off")
            self._fixed.check_current(prefix)
