"""The stable-baselines3 side of RL fine-tuning: a BC :class:`VLAPolicy` into an SB3 actor and
back, the PPO / SAC models built from it, and the callbacks the loop trains them with.

The SB3 adapter (:mod:`vla_gym.policies.sb3`) runs the same :class:`VLATrunk` a VLAPolicy
holds, so RL can start from the BC weights exactly:

* trunk -> the features extractor(s), the policy's state standardisation folded into the
  trunk's first state layer (the extractor reads raw state);
* continuous action head -> ``mlp_extractor.policy_net`` + ``action_net``, the action
  standardisation folded into ``action_net`` (SB3's Gaussian mean is the action itself).

With :func:`actor_kwargs` the SB3 actor's deterministic action equals ``policy.predict``
before any RL update. :func:`export_policy` writes the actor back as a VLAPolicy (identity
normalisers, folded weights), so ``vla-gym eval`` and the deploy loop run the RL result.
:func:`build_model` makes the PPO (or SAC) model from an :class:`RLConfig`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import stable_baselines3 as sb3
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import MultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import MlpExtractor
from torch import Tensor, nn

from vla_gym.policies.sb3 import VLAFeaturesExtractor, sb3_policy_kwargs


def check_bc_policy(policy: Any) -> None:
    """Refuse a policy whose head SB3's Gaussian actor cannot reproduce."""
    cfg = policy.config
    if cfg.head.kind != "continuous":
        raise ValueError(f"RL fine-tuning starts from a continuous action head; this policy "
                         f"has head.kind={cfg.head.kind!r}")
    if len(policy.action_heads) != 1:
        raise ValueError("RL fine-tuning starts from a single action head; this policy is an "
                         f"ensemble of {len(policy.action_heads)} heads")


def _head_linears(policy: Any) -> list[nn.Linear]:
    return [m for m in policy.action_heads[0].net if isinstance(m, nn.Linear)]


class DetachedCritic(MlpExtractor):
    """The critic reads the shared trunk's features without moving them: value-loss gradients
    stop at the features, so only the actor's loss trains the trunk the BC policy built."""

    def forward_critic(self, features: Tensor) -> Tensor:
        return self.value_net(features.detach())


class AnchoredActorCritic(MultiInputActorCriticPolicy):
    """SB3's multi-input actor-critic with a :class:`DetachedCritic`: one trunk pass per
    observation serves both heads (half the cost of a second trunk for the critic)."""

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = DetachedCritic(self.features_dim, net_arch=self.net_arch,
                                            activation_fn=self.activation_fn, device=self.device)


def actor_kwargs(policy: Any, value_layers: tuple[int, ...] = (128,),
                 log_std_init: float = -1.6, share_features: bool = True) -> dict[str, Any]:
    """``policy_kwargs`` for PPO whose actor has the BC head's shape (GELU, same widths).

    ``share_features``: the critic reads the actor's trunk (with :class:`AnchoredActorCritic`,
    detached), else it gets its own copy of the trunk, initialised from BC too.
    """
    check_bc_policy(policy)
    hidden = [layer.out_features for layer in _head_linears(policy)[:-1]]
    return sb3_policy_kwargs(policy.config, net_arch={"pi": hidden, "vf": list(value_layers)},
                             activation_fn=nn.GELU, log_std_init=log_std_init,
                             share_features_extractor=share_features)


def _extractors(sb3_policy: Any) -> list[VLAFeaturesExtractor]:
    found = [sb3_policy.pi_features_extractor, sb3_policy.vf_features_extractor,
             sb3_policy.features_extractor]
    unique: dict[int, VLAFeaturesExtractor] = {id(e): e for e in found if e is not None}
    return list(unique.values())


@torch.no_grad()
def load_trunk(extractor: VLAFeaturesExtractor, policy: Any) -> None:
    """The policy's trunk into ``extractor``, state standardisation folded in."""
    extractor.trunk.load_state_dict(policy.trunk.state_dict())
    if not policy.config.use_state:
        return
    first = cast(nn.Linear, extractor.trunk.state[0])
    mean, std = policy.normalizer.state_mean, policy.normalizer.state_std
    index = cast(torch.Tensor, policy.trunk.state_index)
    if len(index):  # the MLP reads only these entries (e.g. no velocities)
        mean, std = mean[index.to(mean.device)], std[index.to(std.device)]
    weight = first.weight / std  # W (s - m) / s_d + b = (W / s_d) s + (b - (W / s_d) m)
    first.weight.copy_(weight)
    first.bias.sub_(weight @ mean)


@torch.no_grad()
def init_from_bc(sb3_policy: Any, policy: Any) -> None:
    """Copy the BC policy into an SB3 actor-critic built with :func:`actor_kwargs`."""
    check_bc_policy(policy)
    for extractor in _extractors(sb3_policy):
        load_trunk(extractor, policy)
    _copy_head(policy, sb3_policy.mlp_extractor.policy_net, sb3_policy.action_net, "SB3 actor")


def _copy_head(policy: Any, hidden_layers: Any, mean_layer: nn.Linear, name: str) -> None:
    """BC head -> an SB3 actor's hidden layers and mean layer, de-normalising the output so
    the actor's mean is the BC action in env units."""
    linears = _head_linears(policy)
    hidden = [m for m in hidden_layers if isinstance(m, nn.Linear)]
    if len(hidden) != len(linears) - 1:
        raise ValueError(f"the {name} has {len(hidden)} hidden layers but the BC head has "
                         f"{len(linears) - 1}; build it with actor_kwargs(policy)")
    for target, source in zip(hidden, linears):
        target.load_state_dict(source.state_dict())
    last, dim = linears[-1], policy.config.contract.dim
    mean, std = policy.normalizer.action_mean, policy.normalizer.action_std
    mean_layer.weight.copy_(last.weight[:dim] * std[:, None])
    mean_layer.bias.copy_(last.bias[:dim] * std + mean)


@torch.no_grad()
def load_sac_from_bc(sac_policy: Any, policy: Any, log_std: float) -> None:
    """Copy the BC policy into an SB3 SAC policy built from :func:`actor_kwargs`' layers.

    SAC squashes its mean through tanh, so the copied head reproduces BC exactly only where
    the BC action is small; the BC anchor penalty pulls the rest into line during training.
    """
    check_bc_policy(policy)
    actor = sac_policy.actor
    extractors = [actor.features_extractor, sac_policy.critic.features_extractor,
                  sac_policy.critic_target.features_extractor]
    for extractor in {id(e): e for e in extractors}.values():
        load_trunk(extractor, policy)
    _copy_head(policy, actor.latent_pi, actor.mu, "SAC actor")
    actor.log_std.weight.zero_()
    actor.log_std.bias.fill_(log_std)


def _actor_parts(sb3_policy: Any) -> tuple[Any, Any, nn.Linear]:
    """(features extractor, hidden layers, mean layer) of a PPO or SAC actor."""
    actor = getattr(sb3_policy, "actor", None)
    if actor is not None:  # SAC
        return actor.features_extractor, actor.latent_pi, actor.mu
    extractor = sb3_policy.pi_features_extractor or sb3_policy.features_extractor
    return extractor, sb3_policy.mlp_extractor.policy_net, sb3_policy.action_net


@torch.no_grad()
def export_policy(sb3_policy: Any, template: Any) -> Any:
    """A VLAPolicy acting as the SB3 actor's deterministic action (``template``: the BC policy,
    which gives config and auxiliary heads). For SAC the tanh squashing is left out: the
    exported mean is clamped to [-1, 1] instead."""
    policy = copy.deepcopy(template).cpu()
    extractor, hidden_layers, mean_layer = _actor_parts(sb3_policy)
    trunk_state = {k: v.detach().cpu() for k, v in extractor.trunk.state_dict().items()}
    policy.trunk.load_state_dict(trunk_state)
    norm = policy.normalizer
    for name in ("state", "action"):
        getattr(norm, f"{name}_mean").zero_()
        getattr(norm, f"{name}_std").fill_(1.0)
    linears = _head_linears(policy)
    hidden = [m for m in hidden_layers if isinstance(m, nn.Linear)]
    for target, source in zip(linears[:-1], hidden):
        target.load_state_dict({k: v.cpu() for k, v in source.state_dict().items()})
    dim = policy.config.contract.dim
    linears[-1].weight[:dim] = mean_layer.weight.detach().cpu()
    linears[-1].bias[:dim] = mean_layer.bias.detach().cpu()
    policy.trunk.cache.clear()
    return policy.eval()


# -- the RL algorithm ---------------------------------------------------------------------------
ALGOS = ("ppo", "sac", "rft")


@dataclass(frozen=True)
class RLConfig:
    """The RL algorithm and its settings: PPO by default; SAC, or reward-ranked fine-tuning
    ("rft", :mod:`vla_gym.training.rft`) as options."""

    algo: str = "ppo"
    n_envs: int = 4
    n_steps: int = 128  # PPO: steps per env per update
    batch_size: int = 128
    n_epochs: int = 4
    lr: float = 3e-5
    gamma: float = 0.98
    gae_lambda: float = 0.95
    clip_range: float = 0.1
    target_kl: float | None = 0.03
    # the actor's starting action noise (std, action units); precise grasps need it small
    init_std: float = 0.1
    bc_weight: float = 0.5  # BC anchor: reward penalty weight (0 = none)
    bc_loss_weight: float = 1.0  # PPO: weight of the BC regression loss (0 = none)
    critic_warmup: int = 2  # PPO: updates at the start of each iteration that train the critic
    # PPO critic: "shared" reads the actor's trunk features (detached), "separate" has its own
    critic_trunk: str = "shared"
    value_layers: tuple[int, ...] = (128,)
    # Scale rewards by a running std of returns (SB3 VecNormalize), for the learned reward and
    # the env's alike, so both reach the learner at a comparable scale.
    normalize_reward: bool = True
    buffer_size: int = 10_000  # SAC replay buffer (image observations are large)
    # RFT: action noise levels the episodes cycle through, the fraction of each call's episodes
    # kept (by learned return), gradient steps per call and their learning rate; batch_size,
    # n_envs (rollout envs), bc_weight (the anchor, here a loss weight) are shared.
    rft_noise: tuple[float, ...] = (0.0, 0.1, 0.2)
    # RFT: the noise's step-to-step correlation (``rft.ActionNoise``; 0 = white)
    rft_noise_correlation: float = 0.0
    rft_keep: float = 0.3
    rft_updates: int = 300
    rft_lr: float = 1e-4
    # RFT: kept episodes label the policy's target maps with where the object they ended
    # holding was (``rft.hindsight_pixels``; needs target geometry, else nothing is added)
    rft_hindsight: bool = True
    # RFT: per scene, this many more episodes on the same seed, each steered at one of the
    # policy's strongest target-map candidates (``rft.focus_points``); the scene's best
    # episode by learned return is its entry in the ranking (0: one episode per scene)
    rft_explore: int = 0
    # RFT: random-shift augmentation of the fit's batches (pixels), as BC trains with: the
    # elite buffer holds far fewer scenes than the demos, and its exact images are learnt
    # by heart without it
    rft_shift: int = 4
    # RFT: hold the policy's target maps near the BC policy's on the fit's frames (KL, at the
    # policy's grounding weight), as the action anchor holds its actions: with hindsight
    # labels from a few dozen scenes, the maps otherwise drift on every other scene
    rft_map_anchor: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"RLConfig.algo must be one of {ALGOS}, got {self.algo!r}")
        if self.critic_trunk not in ("shared", "separate"):
            raise ValueError(f"RLConfig.critic_trunk must be 'shared' or 'separate', got "
                             f"{self.critic_trunk!r}")
        if not 0 < self.rft_keep <= 1:
            raise ValueError(f"RLConfig.rft_keep must be in (0, 1], got {self.rft_keep}")
        if not 0.0 <= self.rft_noise_correlation < 1.0:
            raise ValueError(f"RLConfig.rft_noise_correlation must be in [0, 1), got "
                             f"{self.rft_noise_correlation}")
        if not self.rft_noise or min(self.rft_noise) < 0:
            raise ValueError(f"RLConfig.rft_noise needs levels >= 0, got {self.rft_noise}")
        if self.rft_shift < 0:
            raise ValueError(f"RLConfig.rft_shift must be >= 0, got {self.rft_shift}")
        if self.rft_explore < 0:
            raise ValueError(f"RLConfig.rft_explore must be >= 0, got {self.rft_explore}")
        if self.init_std <= 0:
            raise ValueError(f"RLConfig.init_std must be > 0, got {self.init_std}")


def build_model(policy: Any, venv: Any, rl: RLConfig, tb_dir: Path | None = None) -> Any:
    """PPO or SAC whose actor starts as the BC policy."""
    if rl.algo not in ("ppo", "sac"):
        raise ValueError(f"build_model makes SB3's PPO or SAC, not {rl.algo!r}")
    shared = rl.critic_trunk == "shared"
    kwargs = actor_kwargs(policy, rl.value_layers, math.log(rl.init_std), shared)
    common: dict[str, Any] = {
        "learning_rate": rl.lr, "gamma": rl.gamma, "seed": rl.seed, "device": "cpu",
        "verbose": 0, "tensorboard_log": str(tb_dir) if tb_dir else None}
    if rl.algo == "ppo":
        model = sb3.PPO(AnchoredActorCritic if shared else "MultiInputPolicy", venv,
                        n_steps=rl.n_steps, batch_size=rl.batch_size,
                        n_epochs=rl.n_epochs, gae_lambda=rl.gae_lambda, clip_range=rl.clip_range,
                        target_kl=rl.target_kl, ent_coef=0.0, policy_kwargs=kwargs, **common)
        init_from_bc(model.policy, policy)
    else:
        model = _build_sac(policy, venv, rl, kwargs, common)
    if tb_dir is None:
        # Without a logger of its own, SB3's learn() makes an empty SB3-<date> folder in the
        # system temp dir on every call; this one keeps the values and writes nothing.
        model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def _build_sac(policy: Any, venv: Any, rl: RLConfig, kwargs: dict[str, Any],
               common: dict[str, Any]) -> Any:
    """SAC: trunks from BC; the actor's mean layer from the BC head (exact where |a| is small,
    as SAC squashes its mean through tanh)."""
    sac_kwargs = {k: v for k, v in kwargs.items() if k not in ("log_std_init",
                                                                "share_features_extractor")}
    sac_kwargs["net_arch"] = {"pi": kwargs["net_arch"]["pi"], "qf": list(rl.value_layers)}
    model = sb3.SAC("MultiInputPolicy", venv, buffer_size=rl.buffer_size,
                    batch_size=rl.batch_size, learning_starts=rl.n_steps, policy_kwargs=sac_kwargs,
                    **common)
    load_sac_from_bc(model.policy, policy, math.log(rl.init_std))
    return model


# -- callbacks ---------------------------------------------------------------------------------
class TrueRewardLog(BaseCallback):
    """Records each finished training episode's true return and whether it succeeded at any
    step (evaluation only: nothing here reaches the learner)."""

    def __init__(self) -> None:
        super().__init__()
        self.episodes: list[dict[str, float]] = []
        self._sums = np.zeros((0, 3))  # per env: true return, learner's return, any success

    def _on_step(self) -> bool:
        infos, dones = self.locals["infos"], self.locals["dones"]
        if len(self._sums) != len(infos):
            self._sums = np.zeros((len(infos), 3))
        for i, info in enumerate(infos):
            sums = self._sums[i]
            sums[0] += float(info.get("true_reward", 0.0))
            sums[1] += float(self.locals["rewards"][i])
            sums[2] = max(sums[2], float(bool(info.get("is_success", False))))
            if dones[i]:
                self.episodes.append({"true_return": sums[0], "reward_return": sums[1],
                                      "success": sums[2]})
                sums[:] = 0.0
        return True

    def _on_rollout_start(self) -> None:
        self._rollout_start = len(self.episodes)

    def _on_rollout_end(self) -> None:
        for key, value in self.summary(getattr(self, "_rollout_start", 0)).items():
            if key != "episodes":
                self.logger.record(f"rlhf/{key}", value)

    def summary(self, since: int = 0) -> dict[str, float]:
        recent = self.episodes[since:]
        if not recent:
            return {"episodes": 0}
        return {"episodes": len(recent),
                **{f"mean_{k}": float(np.mean([e[k] for e in recent])) for k in recent[0]}}


class CriticWarmup(BaseCallback):
    """Freezes the actor for the first ``updates`` PPO updates of a ``learn`` call: the critic
    first learns the (new) reward's values, so early advantages do not wreck the BC actor."""

    def __init__(self, updates: int) -> None:
        super().__init__()
        self.updates, self.rollouts = updates, 0

    def _actor(self) -> list[Any]:
        policy: Any = self.model.policy
        modules = [policy.pi_features_extractor, policy.mlp_extractor.policy_net,
                   policy.action_net]
        return [p for m in modules for p in m.parameters()] + [policy.log_std]

    def _set(self, trainable: bool) -> None:
        for p in self._actor():
            p.requires_grad_(trainable)

    def _on_training_start(self) -> None:
        self.rollouts = 0
        self._set(self.updates == 0)

    def _on_rollout_end(self) -> None:
        self.rollouts += 1
        if self.rollouts > self.updates:
            self._set(True)

    def _on_training_end(self) -> None:
        self._set(True)

    def _on_step(self) -> bool:
        return True


class BCRegulariser(BaseCallback):
    """PPO only: after each PPO update, one pass over that rollout's observations pulling the
    actor's mean action toward the BC actor's (``weight * mean((mu - mu_BC)^2)``, as DAPG adds a
    BC term). It runs *after* the update so PPO's importance ratios still start at 1.

    The reward penalty alone is a noisy pull (it acts through returns); this one is direct,
    so the noisy advantages of a small batch cannot walk the actor away from BC unopposed.
    """

    def __init__(self, weight: float, batch_size: int = 128, seed: int = 0) -> None:
        super().__init__()
        self.weight, self.batch_size = weight, batch_size
        self.rng = np.random.default_rng(seed)
        self.reference: Any = None
        self._pending: dict[str, np.ndarray] | None = None

    def _on_training_start(self) -> None:
        if self.reference is None:  # the BC actor as it was before any RL update
            self.reference = copy.deepcopy(self.model.policy).eval()
            self.reference.requires_grad_(False)

    def _on_rollout_end(self) -> None:  # keep the observations; PPO's update comes next
        ppo: Any = self.model
        buffer = ppo.rollout_buffer
        self._pending = {k: v.reshape(-1, *v.shape[2:]).copy()
                         for k, v in buffer.observations.items()}

    def _on_rollout_start(self) -> None:  # the previous rollout's update is done
        self._pull()

    def _on_training_end(self) -> None:
        self._pull()

    def _pull(self) -> None:
        from stable_baselines3.common.utils import obs_as_tensor

        if self._pending is None:
            return
        observations, self._pending = self._pending, None
        ppo: Any = self.model
        order = self.rng.permutation(len(next(iter(observations.values()))))
        losses = []
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            obs = obs_as_tensor({k: v[rows] for k, v in observations.items()}, ppo.device)
            mean = ppo.policy.get_distribution(obs).distribution.mean
            with torch.no_grad():
                target = self.reference.get_distribution(obs).distribution.mean
            loss = self.weight * ((mean - target) ** 2).mean()
            if not loss.requires_grad:  # the actor is frozen (critic warm-up)
                return
            ppo.policy.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ppo.policy.parameters(), ppo.max_grad_norm)
            ppo.policy.optimizer.step()
            losses.append(loss.item())
        self.logger.record("rlhf/bc_loss", float(np.mean(losses)))

    def _on_step(self) -> bool:
        return True
