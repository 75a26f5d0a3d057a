"""Any network a task can train: aelab's ConvAutoEncoder, or a user's own nn.Module.

A network is kept as its spec, `{"_target_": "pkg.Class", **constructor arguments}` in plain
values: the task's hyperparameters and the checkpoint hold it, so that eval.py, the scripts and
load_from_checkpoint rebuild the same network. Building a spec imports its class; whether a spec
read back from a file may be built is aelab.config.trusted's question, asked before this one.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import torch
from torch import nn

from aelab.config.trusted import locate
from aelab.errors import AelabError
from aelab.models.autoencoder import ConvAutoEncoder, bottleneck

SEED_TARGET = "aelab.models.ConvAutoEncoder"
# The spec each plug-in network was built from (a plug-in cannot say its own arguments).
_BUILT_FROM: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def saved_spec(settings: object) -> dict:
    """A spec from a task's hyperparameters or a checkpoint: checkpoints written before networks
    were plug-ins hold ConvAutoEncoder.config() alone, without a `_target_`."""
    if not isinstance(settings, Mapping):
        raise AelabError(
            f"The network settings {settings!r} are not a ConvAutoEncoder's, nor any network's: "
            "a checkpoint written by aelab holds a mapping of its class and arguments."
        )
    settings = dict(settings)
    return settings if "_target_" in settings else {"_target_": SEED_TARGET, **settings}


def build_network(spec: Mapping) -> nn.Module:
    """The network a spec describes; AelabError when the class cannot be built from it."""
    spec = saved_spec(spec)
    target = spec.pop("_target_")
    hydra_keys = [key for key in spec if str(key).startswith("_")]
    if hydra_keys:
        raise AelabError(
            f"model.{hydra_keys[0]}: a network is built from its class and plain constructor "
            "arguments, which its checkpoint keeps to rebuild it; Hydra's _partial_, _args_, "
            f"_convert_ and _recursive_ are not taken. Remove model.{hydra_keys[0]}."
        )
    try:
        network_class = locate(str(target))
    except (ImportError, AttributeError) as error:
        raise AelabError(
            f"The network class {target!r} cannot be imported ({error}). A custom network's module "
            "must be importable from where the command runs (docs/custom_network.md)."
        ) from None
    if not (isinstance(network_class, type) and issubclass(network_class, nn.Module)):
        raise AelabError(f"model._target_={target} is not a torch.nn.Module class.")
    try:
        network = network_class(**spec)
    except (TypeError, ValueError) as error:  # unknown keys, wrong types
        raise AelabError(
            f"The network settings {spec!r} are not a {network_class.__name__}'s ({error}); "
            f"they are {target}'s arguments: on the command line, give a missing one as "
            "+model.KEY=VALUE."
        ) from None
    if not isinstance(network, ConvAutoEncoder):
        _BUILT_FROM[network] = {"_target_": target, **spec}
    return network


def network_spec(network: nn.Module) -> dict:
    """The spec that rebuilds `network`: ConvAutoEncoder says its own arguments; a plug-in
    network is known by the spec build_network made it from."""
    if isinstance(network, ConvAutoEncoder):
        return {"_target_": SEED_TARGET, **network.config()}
    if network in _BUILT_FROM:
        return dict(_BUILT_FROM[network])
    name = f"{type(network).__module__}.{type(network).__qualname__}"
    raise AelabError(
        f"A {name} cannot be saved so that it is rebuilt: aelab keeps a network as its class and "
        f"constructor arguments. Give the task model={{'_target_': '{name}', 'in_channels': …, "
        "'out_channels': …, …} instead of the built network."
    )


def spec_differences(saved: dict, built: dict) -> str:
    """The settings in which two network specs differ, as `key: saved vs built`; '' if none."""
    keys = sorted(set(saved) | set(built), key=str)
    return ", ".join(
        f"{k}: {saved.get(k, '(none)')} vs {built.get(k, '(none)')}"
        for k in keys
        if saved.get(k) != built.get(k)
    )


def channels(spec: Mapping) -> tuple[object, object]:
    """The (in, out) channels a spec builds: every network the tasks train takes both."""
    return spec.get("in_channels"), spec.get("out_channels")


def is_custom(network: nn.Module) -> bool:
    """Whether `network` is a user's own (not aelab's ConvAutoEncoder, whose layers aelab reads)."""
    return not isinstance(network, ConvAutoEncoder)


def size_multiple(network: nn.Module) -> int:
    """What an image's side must be a multiple of to come back at its size: 2^poolings for a
    ConvAutoEncoder, a plug-in's own `size_multiple` if it states one, else 1."""
    if isinstance(network, ConvAutoEncoder):
        return 2**network.pooling_stages
    return int(getattr(network, "size_multiple", 1))


def check_output_size(network: nn.Module, image_size: int) -> None:
    """Refuse, before training, a plug-in whose output for an image is not out_channels at the
    image's size (the loss compares it with the target pixel by pixel)."""
    if isinstance(network, ConvAutoEncoder):
        return  # its size rule is checked from its settings (runtime.train.build)
    in_channels, out_channels = channels(network_spec(network))
    dummy = torch.zeros(1, in_channels, image_size, image_size)
    shape = tuple(probe(network, network, dummy).shape)
    wanted = (1, out_channels, image_size, image_size)
    if shape != wanted:
        raise AelabError(
            f"{network_spec(network)['_target_']} maps a {tuple(dummy.shape)} batch to "
            f"{shape}; the task needs {wanted}: out_channels at the image's size."
        )


def probe(network: nn.Module, function, batch: torch.Tensor) -> torch.Tensor:
    """function(batch) in eval mode without gradients, the network's mode restored after: a
    dummy batch must not move a norm layer's running statistics before training."""
    training = network.training
    network.eval()
    try:
        with torch.no_grad():
            return function(batch)
    finally:
        network.train(training)


def network_facts(network: nn.Module, image_size: int, target: str | None = None) -> dict:
    """The start line's and metrics.json's facts: the code's shape and size, measured by running
    a plug-in's `encode` on one dummy batch; without `encode` its code size is unknown."""
    if isinstance(network, ConvAutoEncoder):
        return bottleneck(network, image_size, target=target)
    in_channels = channels(network_spec(network))[0]
    encode = getattr(network, "encode", None)
    if callable(encode):
        code = probe(network, encode, torch.zeros(1, in_channels, image_size, image_size))
        return bottleneck(MeasuredCode(network, tuple(code.shape[1:])), image_size, target=target)
    name = type(network).__name__
    return {
        "latent_shape": None,
        "latent_size": None,
        "input_size": in_channels * image_size * image_size,
        "compression": None,
        "has_bottleneck": None,
        "parameters": sum(p.numel() for p in network.parameters()),
        "summary": (
            f"{name}: code size unknown ({name} has no encode(), so aelab cannot measure its "
            "code; give it an encode(x) returning the code to have it measured)"
        ),
    }


class MeasuredCode:
    """What bottleneck() reads of a network, for a plug-in: its channels, parameters and the
    code shape measured by its encode()."""

    def __init__(self, network: nn.Module, code_shape: tuple[int, ...]) -> None:
        self.in_channels, self.out_channels = channels(network_spec(network))
        self.code_shape, self.network = code_shape, network

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        return self.code_shape

    def parameters(self):
        return self.network.parameters()
