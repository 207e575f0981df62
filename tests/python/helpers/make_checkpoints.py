"""Writes PyTorch checkpoints in torch.save's formats without torch, for the Rust reader's tests.

    python3 make_checkpoints.py OUT_DIR
    python3 make_checkpoints.py --panns OUT_DIR N_MELS ARCH:WIDTH [ARCH:WIDTH ...]

torch is not needed (and must not be imported): stand-ins for the few torch names a state dict
pickles (`torch._utils._rebuild_tensor_v2`, `torch.FloatStorage`, ...) are registered as modules
so that the standard pickle module writes them as torch would, and the zip and legacy containers
are written as torch/serialization.py writes them (`_save`, `_legacy_save`). Tensors are built
from their logical values (nested lists); their storages are laid out from those values (row
major, transposed, shared at an offset), so the expected values never go through a strided
read like the reader's.

Writes OUT_DIR/*.pth and OUT_DIR/expected.json:
    {"tensors": {file: {name: {"shape": [...], "data": [...]}}},
     "errors": {file: [substrings the reader's error must contain]}}
Values in `data` are exactly representable in the stored type, so f32 comparisons are exact.

With --panns, writes PANNs-shaped checkpoints (Kong et al. 2020, audioset_tagging_cnn's
pytorch/models.py) for the trainer's `fit --pretrained` tests, one per ARCH:WIDTH (ARCH: cnn6,
cnn10, cnn14; WIDTH 64 gives the published sizes, the tests use a few channels):
    OUT_DIR/panns_<arch>_w<width>.pth   {'iteration': 0, 'model': state dict}, names without
                                        `module.`, random values, the front-end's buffers,
                                        fc_audioset and num_batches_tracked (int64) included
    OUT_DIR/panns_<arch>_w<width>.json  {name: {"shape", "data", "dtype": "f32" | "i64"}}
"""

import collections
import json
import os
import pickle
import random
import struct
import sys
import types
import zipfile

# --- torch stand-ins: names only; nothing here is ever called. -----------------------------


def _never_called(*_args):
    raise RuntimeError("a stand-in for a torch function: this script only writes pickles")


def _module(name):
    module = types.ModuleType(name)
    sys.modules[name] = module
    return module


torch = _module("torch")
torch_utils = _module("torch._utils")
torch_cuda = _module("torch.cuda")
torch._utils = torch_utils
torch.cuda = torch_cuda
for function in ("_rebuild_tensor_v2", "_rebuild_parameter"):
    stand_in = types.FunctionType(_never_called.__code__, {}, function)
    stand_in.__module__ = "torch._utils"
    stand_in.__qualname__ = function
    setattr(torch_utils, function, stand_in)

# struct formats of the storage classes; bfloat16 has none (see pack_values).
STORAGE_FORMATS = {
    "FloatStorage": "f",
    "HalfStorage": "e",
    "BFloat16Storage": None,
    "DoubleStorage": "d",
    "LongStorage": "q",
}
for module, module_name in ((torch, "torch"), (torch_cuda, "torch.cuda")):
    for class_name in STORAGE_FORMATS:
        setattr(module, class_name, type(class_name, (), {"__module__": module_name}))

# A class from a library the reader does not know (a sampler's random state).
sampler_lib = _module("sampler_lib")


class RandomState:
    def __init__(self, seed):
        self.seed = seed

    def __reduce__(self):
        return (RandomState, ("MT19937",), {"state": [self.seed, 1, 2, 3]})


RandomState.__module__ = "sampler_lib"
sampler_lib.RandomState = RandomState


class Net:
    """Stands for a model pickled whole (torch.save(model))."""


Net.__module__ = "mymodels"
_module("mymodels").Net = Net

# --- storages and tensors ------------------------------------------------------------------


def f32(value):
    """The f32 nearest to value, as a Python float (what the reader must return)."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def pack_values(class_name, values, byteorder):
    mark = "<" if byteorder == "little" else ">"
    if class_name == "BFloat16Storage":
        # bfloat16: the high half of the f32 (values chosen to be exact).
        out = b""
        for v in values:
            bits = struct.unpack("<I", struct.pack("<f", v))[0]
            assert bits & 0xFFFF == 0, f"{v} is not exact in bfloat16"
            out += struct.pack(mark + "H", bits >> 16)
        return out
    fmt = STORAGE_FORMATS[class_name]
    return struct.pack(mark + fmt * len(values), *values)


class Storage:
    def __init__(self, key, class_name, values, module="torch"):
        self.key = key
        self.class_name = class_name
        self.values = list(values)
        self.storage_class = getattr(sys.modules[module], class_name)
        if class_name == "HalfStorage":
            for v in self.values:
                assert struct.unpack("<e", struct.pack("<e", v))[0] == v, v


class Tensor:
    """`_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)` when pickled."""

    def __init__(self, storage, offset, size, stride, parameter=False):
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)
        self.parameter = parameter

    def __reduce__(self):
        rebuilt = (
            torch_utils._rebuild_tensor_v2,
            (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()),
        )
        if self.parameter:
            inner = Tensor(self.storage, self.offset, self.size, self.stride)
            return (torch_utils._rebuild_parameter, (inner, True, collections.OrderedDict()))
        return rebuilt


def flatten(nested):
    if isinstance(nested, list):
        return [x for item in nested for x in flatten(item)]
    return [nested]


def shape_of(nested):
    shape = []
    while isinstance(nested, list):
        shape.append(len(nested))
        nested = nested[0] if nested else None
    return shape


def contiguous_strides(shape):
    strides, step = [], 1
    for n in reversed(shape):
        strides.insert(0, step)
        step *= n
    return strides


class Checkpoint:
    """Collects the storages of one file and the values the reader must return."""

    def __init__(self):
        self.storages = {}
        self.expected = {}
        self.next_key = 0

    def storage(self, class_name, values, module="torch"):
        key = str(self.next_key)
        self.next_key += 1
        self.storages[key] = Storage(key, class_name, values, module)
        return self.storages[key]

    def expect(self, name, nested):
        self.expected[name] = {"shape": shape_of(nested), "data": [f32(v) for v in flatten(nested)]}

    def contiguous(self, name, nested, class_name="FloatStorage", module="torch", parameter=False):
        shape = shape_of(nested)
        storage = self.storage(class_name, flatten(nested), module)
        self.expect(name, nested)
        return Tensor(storage, 0, shape, contiguous_strides(shape), parameter)

    def transposed(self, name, matrix):
        """The transpose of `matrix`, saved as torch saves `m.t()`: m's storage, swapped strides."""
        rows, cols = len(matrix), len(matrix[0])
        storage = self.storage("FloatStorage", flatten(matrix))
        self.expect(name, [[matrix[r][c] for r in range(rows)] for c in range(cols)])
        return Tensor(storage, 0, (cols, rows), (1, cols))

    def shared(self, names_and_values):
        """Several 1-D tensors packed one after another in one storage."""
        storage = self.storage("FloatStorage", [v for _, values in names_and_values for v in values])
        tensors, offset = {}, 0
        for name, values in names_and_values:
            self.expect(name, values)
            tensors[name] = Tensor(storage, offset, (len(values),), (1,))
            offset += len(values)
        return tensors


# --- the two containers --------------------------------------------------------------------


class ZipPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.storage_class, obj.key, "cpu", len(obj.values))
        return None


class LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            view = getattr(obj, "view", None)
            return ("storage", obj.storage_class, obj.key, "cuda:0", len(obj.values), view)
        if isinstance(obj, Net):
            # How the legacy format saves a module's class along with its source.
            return ("module", Net, "net.py", "class Net(nn.Module): ...")
        return None


def write_zip(path, obj, checkpoint, prefix="archive", byteorder="little", pickler=ZipPickler,
              storage_bytes=None):
    import io

    buffer = io.BytesIO()
    pickler(buffer, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", buffer.getvalue())
        archive.writestr(f"{prefix}/byteorder", byteorder)
        for key, storage in checkpoint.storages.items():
            data = pack_values(storage.class_name, storage.values, byteorder)
            if storage_bytes is not None:
                data = storage_bytes(key, data)
            archive.writestr(f"{prefix}/data/{key}", data)
        archive.writestr(f"{prefix}/version", "3\n")


def write_legacy(path, obj, checkpoint):
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        sys_info = {"protocol_version": 1001, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}
        pickle.dump(sys_info, f, protocol=2)
        LegacyPickler(f, protocol=2).dump(obj)
        keys = sorted(checkpoint.storages)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            storage = checkpoint.storages[key]
            f.write(struct.pack("<q", len(storage.values)))
            f.write(pack_values(storage.class_name, storage.values, "little"))


# --- the checkpoints -----------------------------------------------------------------------


def state_dict_file(out, expected):
    """A bare state dict (an OrderedDict with `_metadata`) exercising every storage layout."""
    c = Checkpoint()
    sd = collections.OrderedDict()
    sd["conv.weight"] = c.contiguous("conv.weight", [[[[0.5, -1.0], [2.0, 3.5]]], [[[4.0, 5.0], [-6.25, 7.0]]]])
    sd["fc.weight"] = c.transposed("fc.weight", [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    shared = c.shared([("bn.weight", [1.0, 1.5, 2.0, 2.5]), ("bn.bias", [-0.5, 0.0, 0.5])])
    sd["bn.weight"] = shared["bn.weight"]
    sd["bn.bias"] = shared["bn.bias"]
    sd["bn.num_batches_tracked"] = c.contiguous("bn.num_batches_tracked", 12345, "LongStorage")
    sd["half.weight"] = c.contiguous("half.weight", [0.5, -1.25, 3.0, 65504.0, 2.0 ** -24], "HalfStorage")
    sd["bf16.weight"] = c.contiguous("bf16.weight", [1.0, -2.5, 0.15625], "BFloat16Storage")
    sd["double.weight"] = c.contiguous("double.weight", [[0.1, -3.0], [1e-3, 2.0]], "DoubleStorage")
    sd["param.weight"] = c.contiguous("param.weight", [[9.0, 8.0, 7.0]], parameter=True)
    # A column of a 2x3 matrix: offset 1, stride 3 (a non-contiguous slice, m[:, 1]).
    matrix = c.storage("FloatStorage", [0.0, 1.0, 2.0, 10.0, 11.0, 12.0])
    sd["column"] = Tensor(matrix, 1, (2,), (3,))
    c.expect("column", [1.0, 11.0])
    sd["empty"] = Tensor(c.storage("FloatStorage", []), 0, (0, 4), (4, 1))
    c.expected["empty"] = {"shape": [0, 4], "data": []}
    sd._metadata = collections.OrderedDict([("", {"version": 1}), ("bn", {"version": 2})])
    write_zip(os.path.join(out, "state_dict.pth"), sd, c)
    expected["tensors"]["state_dict.pth"] = c.expected


def panns_file(out, expected):
    """PANNs' shape: {'iteration', 'model': DataParallel state dict, 'sampler', 'optimizer'}."""
    c = Checkpoint()
    model = collections.OrderedDict()
    for name, nested in [
        ("bn0.weight", [1.0, 2.0]),
        ("conv_block1.conv1.weight", [[[[0.25]]], [[[-0.75]]]]),
        ("fc1.bias", [3.0, 4.0, 5.0]),
    ]:
        model["module." + name] = c.contiguous(name, nested)
    optimizer = {
        "state": {0: {"step": 3, "exp_avg": c.contiguous("ignored.exp_avg", [0.0, 0.0])}},
        "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "amsgrad": False, "params": [0, 1]}],
    }
    del c.expected["ignored.exp_avg"]
    checkpoint = {"iteration": 660000, "model": model, "sampler": RandomState(7), "optimizer": optimizer}
    write_zip(os.path.join(out, "panns.pth"), checkpoint, c, prefix="Cnn14_mAP=0.431")
    expected["tensors"]["panns.pth"] = c.expected


def big_endian_file(out, expected):
    c = Checkpoint()
    sd = {"w": c.contiguous("w", [[1.5, -2.0], [3.25, 1e-3]]), "h": c.contiguous("h", [0.5, -4.0], "HalfStorage")}
    write_zip(os.path.join(out, "big_endian.pth"), sd, c, byteorder="big")
    expected["tensors"]["big_endian.pth"] = c.expected


def tuple_file(out, expected):
    """aiSFX's shape: torch.save((state_dict, ds_dict)), a tuple at the top."""
    c = Checkpoint()
    sd = collections.OrderedDict()
    sd["embedding_net.conv_block1.conv1.weight"] = c.contiguous(
        "embedding_net.conv_block1.conv1.weight", [[[[0.5, -0.25], [1.0, 2.0]]]]
    )
    sd["fc.0.0.bias"] = c.contiguous("fc.0.0.bias", [0.125, -3.0])
    ds_dict = {"library_a": (0, 42), "library_b": (1, 7)}
    write_zip(os.path.join(out, "tuple.pth"), (sd, ds_dict), c)
    expected["tensors"]["tuple.pth"] = c.expected


def legacy_file(out, expected):
    """torch < 1.6: consecutive pickles, CUDA storage classes, a storage view, a wrapper."""
    c = Checkpoint()
    sd = collections.OrderedDict()
    sd["conv.weight"] = c.contiguous("conv.weight", [[1.0, -2.0], [3.0, -4.0]], module="torch.cuda")
    sd["fc.weight"] = c.transposed("fc.weight", [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    sd["half"] = c.contiguous("half", [0.125, -8.0], "HalfStorage", module="torch.cuda")
    # A legacy storage view: elements 2..5 of a root storage of 6, as its own storage.
    root = c.storage("FloatStorage", [0.0, 0.5, 1.0, 1.5, 2.0, 2.5], module="torch.cuda")

    class View(Storage):
        pass

    view = View(root.key, "FloatStorage", root.values, "torch.cuda")
    view.view = ("view-of-" + root.key, 2, 3)
    sd["view"] = Tensor(view, 1, (2,), (1,))
    c.expect("view", [1.5, 2.0])
    write_legacy(os.path.join(out, "legacy.pth"), {"model": sd, "sampler": RandomState(3)}, c)
    expected["tensors"]["legacy.pth"] = c.expected


def broken_files(out, expected):
    errors = expected["errors"]
    # A whole model pickled: an object of a class the reader does not know.
    c = Checkpoint()
    net = Net()
    net.weight = c.contiguous("weight", [1.0])
    write_zip(os.path.join(out, "model_pickle.pth"), net, c)
    errors["model_pickle.pth"] = ["mymodels.Net", "state_dict()"]
    # A tensor reaching past its storage.
    c = Checkpoint()
    storage = c.storage("FloatStorage", [1.0, 2.0, 3.0, 4.0])
    write_zip(os.path.join(out, "bad_stride.pth"), {"w": Tensor(storage, 0, (3, 3), (3, 1))}, c)
    errors["bad_stride.pth"] = ["tensor w", "storage 0", "corrupt"]
    # A storage file shorter than its persistent id says.
    c = Checkpoint()
    sd = {"short.weight": c.contiguous("short.weight", [1.0, 2.0, 3.0, 4.0])}
    write_zip(os.path.join(out, "short_storage.pth"), sd, c, storage_bytes=lambda key, data: data[:8])
    errors["short_storage.pth"] = ["short.weight", "truncated"]
    # No state dict anywhere.
    c = Checkpoint()
    write_zip(os.path.join(out, "no_state_dict.pth"), {"epoch": 3, "losses": [0.5, 0.25]}, c)
    errors["no_state_dict.pth"] = ["holds no state dict", "'epoch' (int)", "'losses' (list)"]
    # A whole model pickled in the legacy format: its class travels as a 'module' persistent id.
    c = Checkpoint()
    write_legacy(os.path.join(out, "legacy_model.pth"), [Net()], c)
    errors["legacy_model.pth"] = ["pickled nn.Module", "state_dict()"]
    # A plain pickle that is not a torch checkpoint.
    with open(os.path.join(out, "plain.pkl"), "wb") as f:
        pickle.dump({"a": 1}, f, protocol=2)
    errors["plain.pkl"] = ["not a torch.save checkpoint"]
    # A protocol-0 (text) pickle inside a torch zip: opcodes the reader does not take.
    with zipfile.ZipFile(os.path.join(out, "text_pickle.pth"), "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"a": 1}, protocol=0))
    errors["text_pickle.pth"] = ["unsupported pickle opcode 0x70", "state_dict()"]


# --- PANNs-shaped checkpoints ----------------------------------------------------------------

PANNS_BLOCKS = {"cnn6": (4, 5, False), "cnn10": (4, 3, True), "cnn14": (6, 3, True)}
"""arch -> (conv blocks, first kernel, second 3x3 conv), as Cnn6 / Cnn10 / Cnn14 in models.py."""


def panns_state_dict(c, arch, width, n_mels, rng):
    """The state dict of PANNs' `arch` at base width `width`, in models.py's order."""
    sd = collections.OrderedDict()

    def nested(shape, draw):
        if not shape:
            return draw()
        return [nested(shape[1:], draw) for _ in range(shape[0])]

    def add(name, shape, low, high):
        sd[name] = c.contiguous(name, nested(list(shape), lambda: rng.uniform(low, high)))

    def weight(name, shape):
        # Uniform with the fan-in's scale, so activations stay moderate through the layers.
        fan_in = 1
        for n in shape[1:]:
            fan_in *= n
        bound = 1.0 / fan_in ** 0.5
        add(name, shape, -bound, bound)

    def batch_norm(name, n):
        add(name + ".weight", [n], 0.5, 1.5)
        add(name + ".bias", [n], -0.5, 0.5)
        add(name + ".running_mean", [n], -0.5, 0.5)
        add(name + ".running_var", [n], 0.25, 2.0)
        sd[name + ".num_batches_tracked"] = c.contiguous(
            name + ".num_batches_tracked", rng.randrange(1, 10**6), "LongStorage")

    # torchlibrosa's STFT and log-mel buffers (tiny: they are never imported).
    add("spectrogram_extractor.stft.conv_real.weight", [3, 1, 4], -1.0, 1.0)
    add("spectrogram_extractor.stft.conv_imag.weight", [3, 1, 4], -1.0, 1.0)
    add("logmel_extractor.melW", [3, n_mels], 0.0, 1.0)
    batch_norm("bn0", n_mels)
    blocks, kernel, double = PANNS_BLOCKS[arch]
    c_in = 1
    for i in range(1, blocks + 1):
        c_out = width << (i - 1)
        weight(f"conv_block{i}.conv1.weight", [c_out, c_in, kernel, kernel])
        if double:
            weight(f"conv_block{i}.conv2.weight", [c_out, c_out, 3, 3])
        batch_norm(f"conv_block{i}.bn1", c_out)
        if double:
            batch_norm(f"conv_block{i}.bn2", c_out)
        c_in = c_out
    weight("fc1.weight", [c_in, c_in])
    add("fc1.bias", [c_in], -0.1, 0.1)
    weight("fc_audioset.weight", [5, c_in])
    add("fc_audioset.bias", [5], -0.1, 0.1)
    return sd


def panns_files(out, n_mels, specs):
    for spec in specs:
        arch, width = spec.split(":")
        width = int(width)
        if arch not in PANNS_BLOCKS:
            sys.exit(f"unknown PANNs CNN {arch!r}; choose one of {', '.join(PANNS_BLOCKS)}")
        c = Checkpoint()
        rng = random.Random(f"{arch}:{width}:{n_mels}")
        sd = panns_state_dict(c, arch, width, n_mels, rng)
        stem = os.path.join(out, f"panns_{arch}_w{width}")
        write_zip(stem + ".pth", {"iteration": 0, "model": sd}, c, prefix=f"{arch}_w{width}")
        expected = {
            name: dict(c.expected[name], dtype="i64" if name.endswith("num_batches_tracked") else "f32")
            for name in sd
        }
        with open(stem + ".json", "w") as f:
            json.dump(expected, f)


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "--panns":
        os.makedirs(sys.argv[2], exist_ok=True)
        panns_files(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
        return
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    expected = {"tensors": {}, "errors": {}}
    state_dict_file(out, expected)
    panns_file(out, expected)
    big_endian_file(out, expected)
    legacy_file(out, expected)
    tuple_file(out, expected)
    broken_files(out, expected)
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":
    main()
