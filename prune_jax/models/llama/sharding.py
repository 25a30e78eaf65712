"""Where our LLaMA's parameters live on a device mesh: FSDP and tensor parallelism.

One rule per parameter kind, in our layouts (``params``), naming a mesh axis per array
axis: the hidden axis D goes over the FSDP axis (``fsdp``, default "data": parameters
are split across the data-parallel devices and all-gathered by XLA where a matmul needs
them), the head / FFN-channel / vocabulary axes over the tensor-parallel axis
(``tp``, default "model"; Megatron's column/row split: q/k/v and gate/up by output
units, o and down by input units, so a block needs one reduction per half):

    q_kernel [D, N, H] → (fsdp, tp, −)     k/v_kernel [D, K, H] → (fsdp, tp, −)
    o_kernel [N, H, D] → (tp, −, fsdp)     gate/up_kernel [D, F] → (fsdp, tp)
    down_kernel [F, D] → (tp, fsdp)        embed [V, D] → (tp, fsdp), lm_head [D, V] → (fsdp, tp)
    norms, biases → replicated

An axis is split only when the mesh has that axis name and the dimension divides by its
size (else that array axis is replicated: e.g. 8 KV heads over a 16-way model axis), so
every rule is valid for every width a pruned model can have.

Memory per device (bytes b per element, P parameters, mesh fsdp × tp):
    ≈ b·P / (fsdp · tp) for the kernels (all but norms and biases).

Meshes from ``jax.make_mesh`` have *explicit* axis types by default, under which a
result's sharding must be stated at every op; everything here (and ``prune``) uses
``auto_mesh`` so XLA's propagation decides intermediate shardings.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

FSDP, TP = "fsdp", "tp"
# parameter name → the role of each of its axes (None: never split)
_AXES: dict[str, tuple[str | None, ...]] = {
    "q_kernel": (FSDP, TP, None),
    "k_kernel": (FSDP, TP, None),
    "v_kernel": (FSDP, TP, None),
    "o_kernel": (TP, None, FSDP),
    "gate_kernel": (FSDP, TP),
    "up_kernel": (FSDP, TP),
    "down_kernel": (TP, FSDP),
    "embed": (TP, FSDP),
    "lm_head": (FSDP, TP),
}


def auto_mesh(mesh: Mesh) -> Mesh:
    """The same devices and axis names with automatic (propagated) shardings."""
    return Mesh(mesh.devices, mesh.axis_names)


MESH_AXES = ("data", "model")  # the axis names the pruning/finetuning code reads (FSDP + data parallel, tensor parallel)


def parse_mesh(spec: str, devices=None, *, axes: tuple[str, ...] | None = MESH_AXES) -> Mesh:
    """"data=4,model=2" → a Mesh over the first 8 devices (axis sizes multiply to the
    devices used; "data=-1" takes all that are left). Axis names outside ``axes`` are
    refused (a misspelt axis would silently shard nothing); ``axes=None`` allows any."""
    devices = list(jax.devices() if devices is None else devices)
    names, sizes = [], []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        name, _, size = part.partition("=")
        if not name.isidentifier() or not size.lstrip("-").isdigit():
            raise ValueError(f"mesh {spec!r}: expected axis=size pairs such as data=4,model=2")
        if axes is not None and name not in axes:
            raise ValueError(f"mesh {spec!r}: unknown axis {name!r}; the axes are {', '.join(axes)}")
        names.append(name)
        sizes.append(int(size))
    if not names or len(set(names)) != len(names):
        raise ValueError(f"mesh {spec!r}: give each axis once, e.g. data=4,model=2")
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh {spec!r}: sizes must be positive (one may be -1: the remaining devices)")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {spec!r}: {len(devices)} devices do not divide by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    total = int(np.prod(sizes))
    if total > len(devices):
        raise ValueError(f"mesh {spec!r} needs {total} devices; {len(devices)} are available")
    return Mesh(np.array(devices[:total]).reshape(sizes), tuple(names))


def param_spec(name: str, shape: tuple[int, ...], mesh: Mesh, *, fsdp: str | None = "data", tp: str | None = "model") -> PartitionSpec:
    """PartitionSpec of the parameter ``name`` (last path entry) of ``shape`` on ``mesh``."""
    roles = _AXES.get(name)
    if roles is None or len(roles) != len(shape):
        return PartitionSpec()
    axis_of = {FSDP: fsdp, TP: tp}
    spec = []
    for role, size in zip(roles, shape):
        axis = axis_of.get(role) if role else None
        spec.append(axis if axis in mesh.shape and size % mesh.shape[axis] == 0 else None)
    return PartitionSpec(*spec)


def param_sharding(path: tuple, shape: tuple[int, ...], mesh: Mesh, **axes) -> NamedSharding:
    """NamedSharding of the parameter at ``path`` (e.g. ("layers", 3, "mlp", "down_kernel"))."""
    return NamedSharding(auto_mesh(mesh), param_spec(str(path[-1]), tuple(shape), mesh, **axes))


def shard_model(model, mesh: Mesh, **axes):
    """Moves every parameter of ``model`` onto ``mesh`` by ``param_spec`` (in place);
    returns the model."""
    def place(path, leaf):
        keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))  # drops the Variable's "value"
        return jax.device_put(leaf, param_sharding(keys, leaf.shape, mesh, **axes))

    state = jax.tree_util.tree_map_with_path(place, nnx.state(model))
    nnx.update(model, state)
    return model


def like(new: jax.Array | np.ndarray, old: jax.Array) -> jax.Array:
    """``new`` (a sliced or refit parameter, or host values read back from a checkpoint)
    placed like ``old`` was: the same mesh and rule for its new shape. Unchanged (on the
    default device when given on the host) when ``old`` is not on a named mesh."""
    sharding = getattr(old, "sharding", None)
    if not isinstance(sharding, NamedSharding) or sharding.mesh.size == 1:
        return jax.numpy.asarray(new)
    spec = [axis if axis is not None and size % sharding.mesh.shape[axis] == 0 else None
            for axis, size in zip(tuple(sharding.spec) + (None,) * (new.ndim - len(sharding.spec)), new.shape)]  # fmt: skip
    return jax.device_put(new, NamedSharding(sharding.mesh, PartitionSpec(*spec)))


def replace_param(module, name: str, value: jax.Array) -> None:
    """``module.name = value`` as a new ``nnx.Param`` in the old one's dtype and placement
    (``like``): slicing and refitting a sharded model keep it sharded."""
    old = getattr(module, name)[...]
    setattr(module, name, nnx.Param(like(value.astype(old.dtype), old)))


def to_host(x, dtype=None) -> np.ndarray:
    """``x`` as a numpy array on this host, also when it is sharded over devices of other
    processes (a multi-host mesh): then every process must call this in the same order
    (``process_allgather`` is a collective)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x, dtype)


# ------------------------------------------------------------------ this process's part of a sharded array

Box = tuple[tuple[int, int], ...]  # a block of a global array: (start, stop) along each axis


def _box(index: tuple[slice, ...], shape: tuple[int, ...]) -> Box:
    """A shard's ``index`` (slices, None for a whole axis) as a `Box` of the global ``shape``."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    return tuple((i.indices(n)[0], i.indices(n)[1]) for i, n in zip(index, shape))


def local_blocks(x) -> list[tuple[Box, list]]:
    """This process's part of ``x`` as blocks of the global array, each with the arrays
    whose row-major bytes, one after the other, are the block's (nothing is copied yet).

    Every distinct shard of this process's devices counts once (replicas are dropped);
    shards that are whole rows (every axis but the first complete) and follow one another
    merge into one block, so a data-parallel stream is one block per process (its rows),
    and a fully addressable one is one block: the whole array. No collective: each process
    calls it on its own.
    """
    shape = tuple(x.shape)
    if not isinstance(x, jax.Array):
        return [(tuple((0, n) for n in shape), [np.asarray(x)])]
    distinct: dict[Box, jax.Array] = {}
    for shard in x.addressable_shards:
        distinct.setdefault(_box(shard.index, shape), shard.data)
    blocks: list[tuple[Box, list]] = []
    for box in sorted(distinct):
        whole_rows = all(box[a] == (0, shape[a]) for a in range(1, len(shape)))
        if blocks and whole_rows and len(shape) and blocks[-1][0][1:] == box[1:] and blocks[-1][0][0][1] == box[0][0]:
            last, parts = blocks[-1]
            blocks[-1] = (((last[0][0], box[0][1]),) + box[1:], parts + [distinct[box]])
        else:
            blocks.append((box, [distinct[box]]))
    return blocks


def from_local_blocks(shape: tuple[int, ...], dtype, sharding, blocks: dict[Box, object], *, name: str = "array") -> jax.Array:
    """The global array of ``shape`` placed by ``sharding``, built from this process's
    ``blocks`` (box → ``read(slices)``: that box's values at the given slices, relative to
    the box): each addressable device's shard is assembled from the blocks that overlap it,
    the inverse of ``local_blocks``. Every process calls it with its own blocks.

    Raises:
      ValueError: the blocks do not cover a shard this process's devices hold (e.g. a
        different mesh or process layout than the one that wrote them).
    """
    shape = tuple(shape)

    def shard(index) -> np.ndarray:
        want = _box(index, shape)
        size = int(np.prod([b - a for a, b in want]))
        if size == 0:
            return np.empty([b - a for a, b in want], dtype)
        if want in blocks:
            return np.asarray(blocks[want](tuple(slice(0, b - a) for a, b in want)))
        out, covered = np.empty([b - a for a, b in want], dtype), 0
        for box, read in blocks.items():
            overlap = [(max(a, c), min(b, d)) for (a, b), (c, d) in zip(want, box)]
            if any(a >= b for a, b in overlap):
                continue
            out[tuple(slice(a - w, b - w) for (a, b), (w, _) in zip(overlap, want))] = read(
                tuple(slice(a - s, b - s) for (a, b), (s, _) in zip(overlap, box)))
            covered += int(np.prod([b - a for a, b in overlap]))
        if covered != size:
            raise ValueError(f"{name}: the saved blocks {sorted(blocks)} do not cover the shard {want} of this process's devices; "
                             "resume with the mesh and processes that wrote them")
        return out

    return jax.make_array_from_callback(shape, sharding, shard)
