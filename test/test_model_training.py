"""Flow-matching training on a small synthetic language-conditioned task drives the model to the targets."""

from __future__ import annotations

import numpy as np
import torch
from model_fixtures import make_observation, tiny_policy, torch_single_thread  # noqa: F401

DIRECTIONS = {"move left": (-1.0, 0.0), "move right": (1.0, 0.0), "move up": (0.0, 1.0), "move down": (0.0, -1.0)}


def _dataset(policy, n: int, seed: int) -> tuple[dict[str, torch.Tensor], list]:
    """``n`` samples from one fixed scene: chunk step k from state s under direction d is s + 0.1 (k + 1) d."""
    rng = np.random.default_rng(seed)
    names = list(DIRECTIONS)
    instructions = [names[i] for i in rng.integers(0, len(names), n)]
    states = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    steps = 0.1 * np.arange(1, policy.config.chunk_size + 1, dtype=np.float32)[None, :, None]
    dirs = np.array([DIRECTIONS[t] for t in instructions], dtype=np.float32)[:, None, :]
    targets = states[:, None, :] + steps * dirs
    scene = make_observation(seed=0).images
    observations = [make_observation(seed=0, instruction=t) for t in instructions]
    for obs, state in zip(observations, states):
        obs.images, obs.state = scene, state
    return policy.processor.collate(observations, targets), observations


def test_a_few_hundred_steps_fit_a_language_conditioned_task():
    policy = tiny_policy(seed=0)
    policy.set_normalization_stats(state={"mean": np.zeros(2), "std": np.full(2, 0.6)},
                                   action={"mean": np.zeros(2), "std": np.full(2, 0.8)})
    data, _ = _dataset(policy, 512, seed=0)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    policy.train()
    losses = []
    for _ in range(300):
        idx = torch.randint(0, 512, (16,), generator=generator)
        loss = policy.compute_loss({k: v[idx] for k, v in data.items()}, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    policy.eval()
    first, last = np.mean(losses[:20]), np.mean(losses[-50:])
    assert last < 0.2 * first, (first, last)

    test_data, observations = _dataset(policy, 32, seed=1)
    sampled = policy.sample_chunk(policy.encode_prefix(observations), generator=torch.Generator().manual_seed(1))
    targets = test_data["actions"]
    error = float(((sampled - targets) ** 2).mean())
    baseline = float(((targets - targets.mean(dim=0)) ** 2).mean())  # always predicting the mean chunk
    assert error < 0.06 * baseline, (error, baseline)
    # The chunks end up the instructed way: the language is used, not only the state.
    moved = (sampled[:, -1] - test_data["state"]).numpy()
    dirs = np.array([DIRECTIONS[o.instruction] for o in observations])
    assert (np.sum(moved * dirs, axis=1) > 0.5).mean() >= 0.9
