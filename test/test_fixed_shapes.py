"""Fixed-shape sampling: the capturable chunk gives the eager actions, compiles whole, and refuses misuse.

CUDA graphs need a GPU: their tests run where one is (benchmarks/gpu_check.py runs them on the device); on CPU
the same code path is checked through the fixed-shape eager and compiled forms, which are what a recording
replays.
"""

from __future__ import annotations

import pytest
import torch
from model_fixtures import fixed_noise, make_observation, tiny_policy, torch_single_thread  # noqa: F401
from torch.utils._python_dispatch import TorchDispatchMode

from hlrp_ros.policies.common.fixed_shapes import FixedShapeSampler
from hlrp_ros.policies.common.flow_matching import euler_denoise, euler_time_tensor
from hlrp_ros.policies.pi0.modeling_pi0 import PI0Policy
from hlrp_ros.policies.pi0.presets import make_config as pi0_config

ABSTRACT = {"abstract_tokens_enabled": True, "abstract_vocab_size": 16, "abstract_max_length": 4}
OBSERVATIONS = [
    make_observation(seed=0, instruction="push the red cube to the left"),
    make_observation(seed=1, instruction="go"),
    make_observation(seed=2, instruction="put the small green block on top of the tall blue tower now", cameras=("top",)),
]


@pytest.fixture(scope="module")
def policy():
    return tiny_policy(seed=0)


def eager_and_fixed(policy, observations, num_steps, seed=0):
    inputs, _ = policy._prefix_inputs(observations)
    noise = fixed_noise(policy, seed=seed, batch=len(observations))
    sampler = FixedShapeSampler(policy.model, policy.fixed_shape_inputs)
    with torch.no_grad():
        eager = policy.model.sample_actions(*inputs[:5], noise=noise, abstract_tokens=inputs[5],
                                            abstract_masks=inputs[6], num_steps=num_steps)
        fixed = sampler.sample(sampler.encode(inputs), noise, num_steps)
    return eager, fixed


@pytest.mark.parametrize("num_steps", [1, 3, 10])
def test_fixed_shapes_give_the_eager_actions(policy, num_steps):
    for obs in OBSERVATIONS:
        eager, fixed = eager_and_fixed(policy, [obs], num_steps)
        assert torch.allclose(fixed, eager, atol=1e-5, rtol=0), (fixed - eager).abs().max()


def test_a_batch_of_prompts_of_different_lengths_gives_the_eager_actions(policy):
    eager, fixed = eager_and_fixed(policy, OBSERVATIONS[:2], 4)
    assert fixed.shape == eager.shape == (2, policy.config.chunk_size, policy.config.max_action_dim)
    assert torch.allclose(fixed, eager, atol=1e-5, rtol=0), (fixed - eager).abs().max()


def test_absent_abstract_tokens_become_masked_padding():
    policy = tiny_policy(seed=1, **ABSTRACT)
    with_tokens = make_observation(seed=3, abstract_tokens=[1, 5])
    for obs in (make_observation(seed=3), with_tokens):
        eager, fixed = eager_and_fixed(policy, [obs], 3)
        assert torch.allclose(fixed, eager, atol=1e-5, rtol=0), (fixed - eager).abs().max()


def test_every_prompt_pads_to_the_same_shapes(policy):
    cfg = policy.config
    shapes = set()
    for obs in OBSERVATIONS:
        inputs, _ = policy._prefix_inputs([obs])
        padded = policy.fixed_shape_inputs(inputs)
        shapes.add((tuple(padded[2].shape), tuple(padded[3].shape)))
    assert shapes == {((1, cfg.tokenizer_max_length), (1, cfg.tokenizer_max_length))}


def test_prefix_pass_and_denoising_step_compile_whole_and_match_eager(policy):
    """``fullgraph=True`` raises at the first graph break, so compiling is the no-break check.

    The aot_eager backend traces exactly what inductor would (dynamo, then AOTAutograd) without generating
    kernels, which keeps this test quick on a CPU; the policy-level test below runs inductor itself.
    """
    torch._dynamo.reset()
    model = policy.model
    inputs = policy.fixed_shape_inputs(policy._prefix_inputs([OBSERVATIONS[0]])[0])
    noise = fixed_noise(policy, batch=1)
    prefix_fn = torch.compile(model.encode_prefix, fullgraph=True, dynamic=False, backend="aot_eager")
    step_fn = torch.compile(model.denoise_step, fullgraph=True, dynamic=False, backend="aot_eager")
    times = euler_time_tensor(5, "cpu")
    with torch.no_grad():
        eager = euler_denoise(model.denoise_step, model.encode_prefix(*inputs, fixed_shapes=True), noise, times)
        compiled = euler_denoise(step_fn, prefix_fn(*inputs, fixed_shapes=True), noise, times)
    assert torch.allclose(compiled, eager, atol=1e-5, rtol=0), (compiled - eager).abs().max()


def test_a_compiled_policy_serves_chunks_like_the_eager_one(torch_single_thread):  # noqa: F811
    """The policy's compiled path end to end (aot_eager: what inductor is given, without generating kernels)."""
    torch._dynamo.reset()
    eager_policy = tiny_policy(seed=2)
    compiled_policy = tiny_policy(seed=2)
    compiled_policy.set_execution(compile="aot_eager")
    for seed, obs in enumerate(OBSERVATIONS[:2]):
        noise = fixed_noise(eager_policy, seed=seed)
        expected = eager_policy.predict_action_chunk(obs, num_steps=3, noise=noise)
        got = compiled_policy.predict_action_chunk(obs, num_steps=3, noise=noise)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


def test_inductor_compiles_the_denoising_step_to_the_eager_velocity(policy, torch_single_thread):  # noqa: F811
    """inductor's own kernels for the step that runs num_steps times a chunk (the prefix pass compiles alike; left
    out here because generating its kernels takes about a minute on a 2-core machine)."""
    torch._dynamo.reset()
    model = policy.model
    inputs = policy.fixed_shape_inputs(policy._prefix_inputs([OBSERVATIONS[0]])[0])
    noise = fixed_noise(policy, batch=1)
    step_fn = torch.compile(model.denoise_step, fullgraph=True, dynamic=False)
    times = euler_time_tensor(3, "cpu")
    with torch.no_grad():
        prefix = model.encode_prefix(*inputs, fixed_shapes=True)
        eager = euler_denoise(model.denoise_step, prefix, noise, times)
        compiled = euler_denoise(step_fn, prefix, noise, times)
    assert torch.allclose(compiled, eager, atol=1e-4, rtol=0), (compiled - eager).abs().max()


class HostTraffic(TorchDispatchMode):
    """Counts the operations that would stall or break a CUDA-graph recording: reading a device value on the
    host (``.item()``, ``bool(t)``) and making a tensor from host data (``torch.tensor(...)``)."""

    HOST_OPS = ("aten._local_scalar_dense", "aten.lift_fresh")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.HOST_OPS):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def host_traffic_of_a_chunk(model, inputs, noise, fixed_shapes: bool) -> list[str]:
    times = euler_time_tensor(3, "cpu")
    with torch.no_grad():
        euler_denoise(model.denoise_step, model.encode_prefix(*inputs, fixed_shapes=True), noise, times)  # warm
        with HostTraffic() as traffic:
            prefix = model.encode_prefix(*inputs, fixed_shapes=fixed_shapes)
            euler_denoise(model.denoise_step, prefix, noise, times)
    return traffic.seen


def test_a_fixed_shape_chunk_never_reads_the_device_on_the_host_nor_copies_host_data_in(policy):
    inputs = policy.fixed_shape_inputs(policy._prefix_inputs([OBSERVATIONS[0]])[0])
    noise = fixed_noise(policy, batch=1)
    assert host_traffic_of_a_chunk(policy.model, inputs, noise, fixed_shapes=True) == []
    # the eager form asks whether the prefix has padding: the check above can see that
    assert host_traffic_of_a_chunk(policy.model, inputs, noise, fixed_shapes=False) != []


@pytest.mark.parametrize("variant", ["pi0-tiny", "pi05-tiny"])
def test_the_pi_family_runs_the_same_fixed_shape_path(variant, torch_single_thread):  # noqa: F811
    torch.manual_seed(0)
    policy = PI0Policy(pi0_config(variant)).eval()
    cfg = policy.config
    obs = make_observation(seed=4, instruction="go left", image_hw=tuple(cfg.image_size),
                           state_dim=cfg.state_dim, cameras=tuple(cfg.camera_names))
    noise = torch.randn(cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(0))
    expected = policy.predict_action_chunk(obs, num_steps=3, noise=noise)
    torch._dynamo.reset()
    model = policy.model
    inputs = policy.fixed_shape_inputs(policy._model_inputs(policy.processor.collate([obs])))
    prefix_fn = torch.compile(model.encode_prefix, fullgraph=True, dynamic=False, backend="aot_eager")
    step_fn = torch.compile(model.denoise_step, fullgraph=True, dynamic=False, backend="aot_eager")
    with torch.no_grad():
        compiled = euler_denoise(step_fn, prefix_fn(*inputs, fixed_shapes=True), noise[None],
                                 euler_time_tensor(3, "cpu"))
    compiled = policy.normalize_action.inverse(compiled[0, :, : cfg.action_dim])
    assert torch.allclose(compiled, expected, atol=1e-5, rtol=0), (compiled - expected).abs().max()
    assert host_traffic_of_a_chunk(model, inputs, noise[None], fixed_shapes=True) == []


def test_cuda_graphs_need_a_cuda_model(policy):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="cuda_graphs needs the model on a CUDA device; it is on cpu"):
        policy.set_execution(cuda_graphs=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device)")
def test_cuda_graph_replay_gives_the_eager_actions_and_refuses_a_stale_prefix():
    policy = tiny_policy(seed=0).to_device_dtype("cuda", "float32")
    eager = [policy.predict_action_chunk(obs, num_steps=4, noise=fixed_noise(policy, seed=i))
             for i, obs in enumerate(OBSERVATIONS)]
    policy.set_execution(cuda_graphs=True)
    for _ in range(2):  # recorded on the first pass, replayed on the second
        for i, obs in enumerate(OBSERVATIONS):
            got = policy.predict_action_chunk(obs, num_steps=4, noise=fixed_noise(policy, seed=i))
            assert torch.allclose(got, eager[i], atol=1e-4, rtol=0), (got - eager[i]).abs().max()
    first = policy.encode_prefix(OBSERVATIONS[0])
    policy.encode_prefix(OBSERVATIONS[1])
    with pytest.raises(ValueError, match="overwritten"):
        policy.sample_chunk(first, num_steps=4)

