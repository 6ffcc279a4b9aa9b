"""qd_capture: record a PyTorch Qwen3-like model's intermediate tensors as a qwen3-diff schema-v1 dump.

Wraps any torch.nn.Module with forward hooks chosen by a name mapping (tap name -> where the tap lives),
records every forward call of the wrapped module as one step (the prompt, then each decode step with a KV
cache, as transformers' generate or a hand-written loop runs them), and writes the result as one schema-v1
file (docs/SCHEMA.md) that `qwen3-diff compare` and `qwen3-diff replay` read:

    import torch, qd_capture
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained("fixtures/gqa_tied", dtype=torch.bfloat16).eval()
    ids = torch.tensor([[5, 17, 3, 42]])
    with torch.no_grad(), qd_capture.Capture(model, "fixtures/gqa_tied") as cap:
        model.generate(ids, max_new_tokens=4, do_sample=False, logits_to_keep=0)
    cap.save("mine.h5", backend="mine")        # prompt + 3 decode steps: T = 4 + 3 rows

    # qwen3-diff --model fixtures/gqa_tied --tokens 5,17,3,42,... --backends ref --dump ref.h5
    # qwen3-diff compare ref.h5:ref mine.h5:mine --model fixtures/gqa_tied

Steps are concatenated by position: row t of every tap is position t whichever forward call computed it, so a
prompt of P tokens and S decode steps give T = P + S rows, and /input_ids holds the prompt and the fed tokens.
The group attribute `step_tokens` records how many positions each call contributed. A call that does not
continue at the next position (a forward without the KV cache after the first) is refused: use one Capture
per sequence. Batches of one only (the schema has no batch axis).

The mapping (HF by default, `HF` below: transformers' Qwen3 module names) gives each tap one of:

    Out("model.layers.{i}.mlp.down_proj")              a module's output ({i} is the layer index)
    Out(path, result=1)                                element 1 of a module's tuple output
    In("model.layers.{i}.mlp.down_proj")               a module's positional input 0 (arg=N or arg="name")
    Fn("apply_rotary_pos_emb", result=0, layout="bht") a result of a Python function looked up by name in a
                                                       module (owner=, default: the module defining the
                                                       wrapped model's class), patched for the session
    None                                               not captured

Each spec may carry `split=(sizes...), part=k`: the tensor is a fused one, cut along its last dimension
into pieces of these sizes, and the tap is piece k. Sizes are integers or products of the config's
dimensions C, I, V, NH, NKV, HD (e.g. "NH*HD"). A fused QKV projection and a fused gate/up projection:

    m = dict(qd_capture.HF)
    qkv = "model.layers.{i}.self_attn.qkv_proj"
    m["q_proj"] = Out(qkv, split=("NH*HD", "NKV*HD", "NKV*HD"), part=0)
    m["k_proj"] = Out(qkv, split=("NH*HD", "NKV*HD", "NKV*HD"), part=1)
    m["v_proj"] = Out(qkv, split=("NH*HD", "NKV*HD", "NKV*HD"), part=2)
    m["gate_proj"] = Out("model.layers.{i}.mlp.gate_up_proj", split=("I", "I"), part=0)
    m["up_proj"] = Out("model.layers.{i}.mlp.gate_up_proj", split=("I", "I"), part=1)

`layout` says how the captured tensor's axes are laid out before it is reshaped to the schema's shape:
"bt" (batch, tokens, ...: transformers, the default), "t" (tokens, ...: engines that flatten the batch, as
vLLM does), "bht" (batch, heads, tokens, head_dim: transformers' q/k inside attention), "ht" (heads, tokens,
head_dim). After it the tensor must hold exactly the schema's (T, ...) elements, or the capture stops with
an error naming the tap and the module.

A tap whose module or function the model does not have, or that some step did not record in full (e.g.
logits under generate's default logits_to_keep=1, which computes the last position's row only), is absent
from the dump, as the schema allows; `Capture.absent` says which and why, and `save` prints them on stderr.
The HF mapping captures all 17 layer taps and embed, final_norm, logits: q_rope and k_rope from transformers'
apply_rotary_pos_emb; attn, attn_residual and act as the inputs of o_proj, post_attention_layernorm and
down_proj; out as the decoder layer's output.

Tensors are widened to float32 on the CPU as they are recorded (bf16 and fp16 exactly) and held in memory
until `save`, which writes to PATH.tmp.<pid> and renames it to PATH when complete (the temporary file is
removed on any error).
"""
import json
import os
import re
import sys
import types
from dataclasses import dataclass

import h5py
import numpy as np
import torch

SCHEMA = "qwen3-diff/1"
MODEL_TAPS = ["embed", "final_norm", "logits"]
LAYER_TAPS = ["attn_norm", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "q_rope", "k_rope", "attn",
              "o_proj", "attn_residual", "mlp_norm", "gate_proj", "up_proj", "act", "down_proj", "out"]
LAYOUTS = ("bt", "t", "bht", "ht")
PRECISIONS = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
GROUP_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")


class CaptureError(Exception):
    """A mapping that does not fit the model, a tensor of the wrong size, or a call the capture cannot record."""


@dataclass(frozen=True)
class Out:
    """The output of the module at `module` (element `result` of a tuple output)."""
    module: str
    result: int = 0
    split: tuple = None
    part: int = 0
    layout: str = "bt"


@dataclass(frozen=True)
class In:
    """The input of the module at `module`: positional argument `arg` (an int) or keyword argument `arg`."""
    module: str
    arg: object = 0
    split: tuple = None
    part: int = 0
    layout: str = "bt"


@dataclass(frozen=True)
class Fn:
    """Result `result` of the function `name` of the Python module `owner` (a module object or its dotted
    name; None: the module that defines the wrapped model's class), called inside a layer."""
    name: str
    result: int = 0
    owner: object = None
    split: tuple = None
    part: int = 0
    layout: str = "bt"


# transformers' Qwen3ForCausalLM (and Qwen2/Llama-style models with q_norm/k_norm under the same names).
HF = {
    "embed": Out("model.embed_tokens"),
    "final_norm": Out("model.norm"),
    "logits": Out("lm_head"),
    "attn_norm": Out("model.layers.{i}.input_layernorm"),
    "q_proj": Out("model.layers.{i}.self_attn.q_proj"),
    "k_proj": Out("model.layers.{i}.self_attn.k_proj"),
    "v_proj": Out("model.layers.{i}.self_attn.v_proj"),
    "q_norm": Out("model.layers.{i}.self_attn.q_norm"),  # (batch, T, NH, HD): before the transpose
    "k_norm": Out("model.layers.{i}.self_attn.k_norm"),
    "q_rope": Fn("apply_rotary_pos_emb", result=0, layout="bht"),
    "k_rope": Fn("apply_rotary_pos_emb", result=1, layout="bht"),
    "attn": In("model.layers.{i}.self_attn.o_proj"),
    "o_proj": Out("model.layers.{i}.self_attn.o_proj"),
    "attn_residual": In("model.layers.{i}.post_attention_layernorm"),
    "mlp_norm": Out("model.layers.{i}.post_attention_layernorm"),
    "gate_proj": Out("model.layers.{i}.mlp.gate_proj"),
    "up_proj": Out("model.layers.{i}.mlp.up_proj"),
    "act": In("model.layers.{i}.mlp.down_proj"),
    "down_proj": Out("model.layers.{i}.mlp.down_proj"),
    "out": Out("model.layers.{i}"),
}
HF_LAYERS = "model.layers.{i}"


def read_config(model_dir):
    """The checkpoint's config.json: (its text, verbatim, and the dimensions the schema names)."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        text = f.read()
    cfg = json.loads(text)
    if "text_config" in cfg and "hidden_size" not in cfg:
        cfg = cfg["text_config"]
    try:
        dims = {"C": cfg["hidden_size"], "I": cfg["intermediate_size"], "V": cfg["vocab_size"],
                "L": cfg["num_hidden_layers"], "NH": cfg["num_attention_heads"]}
    except KeyError as k:
        raise CaptureError(f"{model_dir}/config.json: no {k.args[0]}") from None
    dims["NKV"] = cfg.get("num_key_value_heads") or dims["NH"]
    dims["HD"] = cfg.get("head_dim") or dims["C"] // dims["NH"]
    return text, dims


def tap_shape(name, d):
    """The schema's shape of a tap after its T rows."""
    C, I, V, NH, NKV, HD = d["C"], d["I"], d["V"], d["NH"], d["NKV"], d["HD"]
    return {"embed": (C,), "final_norm": (C,), "logits": (V,), "attn_norm": (C,), "q_proj": (NH * HD,),
            "k_proj": (NKV * HD,), "v_proj": (NKV * HD,), "q_norm": (NH, HD), "k_norm": (NKV, HD),
            "q_rope": (NH, HD), "k_rope": (NKV, HD), "attn": (NH * HD,), "o_proj": (C,), "attn_residual": (C,),
            "mlp_norm": (C,), "gate_proj": (I,), "up_proj": (I,), "act": (I,), "down_proj": (C,),
            "out": (C,)}[name]


def size_of(expr, dims):
    """An integer, or a product of the config's dimension names such as "NH*HD"."""
    if isinstance(expr, int):
        return expr
    n = 1
    for f in str(expr).split("*"):
        f = f.strip()
        if f.isdigit():
            n *= int(f)
        elif f in dims:
            n *= dims[f]
        else:
            raise CaptureError(f"split size '{expr}': '{f}' is not an integer or one of {', '.join(sorted(dims))}")
    return n


def _tensor(x, result, what):
    if isinstance(x, (tuple, list)):
        if result >= len(x):
            raise CaptureError(f"{what}: wanted element {result} of a tuple of {len(x)}")
        x = x[result]
    elif hasattr(x, "to_tuple") and not torch.is_tensor(x):  # a ModelOutput
        return _tensor(x.to_tuple(), result, what)
    elif result != 0:
        raise CaptureError(f"{what}: wanted element {result}, the value is not a tuple")
    if not torch.is_tensor(x):
        raise CaptureError(f"{what}: not a tensor ({type(x).__name__})")
    return x


def _ids_of(args, kwargs):
    ids = kwargs.get("input_ids")
    if ids is None and args and torch.is_tensor(args[0]) and not torch.is_floating_point(args[0]):
        ids = args[0]
    return ids


def _first_position(kwargs):
    for k in ("cache_position", "position_ids", "positions"):
        p = kwargs.get(k)
        if torch.is_tensor(p) and p.numel():
            return int(p.reshape(-1)[0])
    return None


class Capture:
    """Records the taps of every forward call of `model` while the `with` block (or attach()..detach()) runs.

    model_dir: the checkpoint directory (its config.json sizes the taps and is stored verbatim).
    mapping: {tap: Out | In | Fn | None}; taps not in it are not captured. Default: HF.
    layers: the layer modules' path with {i}, for Fn taps (which layer a function call belongs to).
    taps: only these tap names (default: every tap of the mapping).
    """

    def __init__(self, model, model_dir, mapping=None, layers=HF_LAYERS, taps=None):
        self.model = model
        self.model_dir = model_dir
        self.config_json, self.dims = read_config(model_dir)
        self.mapping = dict(HF if mapping is None else mapping)
        unknown = sorted(set(self.mapping) - set(MODEL_TAPS) - set(LAYER_TAPS))
        if unknown:
            raise CaptureError(f"mapping: not schema-v1 taps: {', '.join(unknown)}")
        if taps is not None:
            bad = sorted(set(taps) - set(MODEL_TAPS) - set(LAYER_TAPS))
            if bad:
                raise CaptureError(f"taps: not schema-v1 taps: {', '.join(bad)}")
            self.mapping = {k: v for k, v in self.mapping.items() if k in set(taps)}
        for tap, spec in self.mapping.items():
            if spec is None:
                continue
            if spec.layout not in LAYOUTS:
                raise CaptureError(f"mapping '{tap}': layout '{spec.layout}', expected one of {', '.join(LAYOUTS)}")
            if spec.split is not None:
                sizes = [size_of(s, self.dims) for s in spec.split]
                if not 0 <= spec.part < len(sizes):
                    raise CaptureError(f"mapping '{tap}': part {spec.part} of a split in {len(sizes)}")
        self.layers = layers
        self.steps = []  # [{"tokens": np.int32 (t,), "pos0": int, "taps": {(layer, tap): np.float32 (t, ...)}}]
        self.absent = {}  # {tap or (layer, tap): why}
        self.dtypes = {}  # {torch dtype: count}: the recorded tensors' own dtypes, for the precision
        self._hooks = []
        self._patches = []
        self._step = None
        self._depth = 0
        self._layer = None
        self._error = None

    # -- attaching ---------------------------------------------------------------------------------------
    def __enter__(self):
        self.attach()
        return self

    def __exit__(self, *exc):
        self.detach()
        return False

    def _module(self, path):
        try:
            return self.model.get_submodule(path)
        except AttributeError:
            return None

    def attach(self):
        if self._hooks or self._patches:
            raise CaptureError("this Capture is already attached")
        L = self.dims["L"]
        self._hooks.append(self.model.register_forward_pre_hook(self._begin, with_kwargs=True))
        self._hooks.append(self.model.register_forward_hook(self._end, always_call=True))
        functions = {}  # (owner module, name) -> [(tap, spec)]
        for tap, spec in self.mapping.items():
            if spec is None:
                self.absent[tap] = "not in the mapping"
                continue
            if isinstance(spec, Fn):
                owner = spec.owner
                if owner is None:
                    owner = sys.modules.get(type(self.model).__module__)
                elif isinstance(owner, str):
                    owner = sys.modules.get(owner)
                if not isinstance(owner, types.ModuleType) or not callable(getattr(owner, spec.name, None)):
                    self.absent[tap] = f"no function {spec.name} in {getattr(owner, '__name__', owner)}"
                    continue
                functions.setdefault((owner, spec.name), []).append((tap, spec))
                continue
            layers = range(L) if tap in LAYER_TAPS else [-1]
            for i in layers:
                path = spec.module.format(i=i)
                mod = self._module(path)
                if mod is None:
                    self.absent[tap if i < 0 else (i, tap)] = f"the model has no module {path}"
                    continue
                if isinstance(spec, Out):
                    h = mod.register_forward_hook(self._out_hook(i, tap, spec, path))
                else:
                    h = mod.register_forward_pre_hook(self._in_hook(i, tap, spec, path), with_kwargs=True)
                self._hooks.append(h)
        if functions:
            found = 0
            for i in range(L):
                mod = self._module(self.layers.format(i=i))
                if mod is None:
                    continue
                found += 1
                self._hooks.append(mod.register_forward_pre_hook(lambda m, a, i=i: self._set_layer(i)))
                self._hooks.append(mod.register_forward_hook(lambda m, a, o: self._set_layer(None), always_call=True))
            if not found:
                for taps in functions.values():
                    for tap, _ in taps:
                        self.absent[tap] = f"no layer modules at {self.layers} to place the function's calls"
                functions = {}
        for (owner, name), taps in functions.items():
            orig = getattr(owner, name)
            setattr(owner, name, self._wrap_function(orig, name, taps))
            self._patches.append((owner, name, orig))

    def detach(self):
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for owner, name, orig in reversed(self._patches):
            setattr(owner, name, orig)
        self._patches = []
        self._step = None
        self._depth = 0
        self._layer = None

    # -- recording ---------------------------------------------------------------------------------------
    def _set_layer(self, i):
        self._layer = i

    def _begin(self, mod, args, kwargs):
        self._depth += 1
        if self._depth > 1:
            return
        ids = _ids_of(args, kwargs)
        if ids is None:
            raise CaptureError("the forward call has no input_ids (a keyword or the first positional argument): "
                               "the dump's /input_ids needs the tokens")
        if ids.dim() == 2:
            if ids.shape[0] != 1:
                raise CaptureError(f"a batch of {ids.shape[0]}: schema v1 holds one sequence; capture one at a time")
            ids = ids[0]
        elif ids.dim() != 1:
            raise CaptureError(f"input_ids of shape {tuple(ids.shape)}: expected (T,) or (1, T)")
        pos0 = sum(len(s["tokens"]) for s in self.steps)
        first = _first_position(kwargs)
        if first is not None and first != pos0:
            raise CaptureError(f"step {len(self.steps)} starts at position {first}, the capture holds positions "
                               f"0..{pos0 - 1}: each forward call must continue the sequence (a KV cache); "
                               "use one Capture per sequence")
        self._step = {"tokens": ids.detach().to("cpu", torch.int64).numpy().astype(np.int32), "pos0": pos0,
                      "taps": {}}

    def _end(self, mod, args, out):
        self._depth -= 1
        if self._depth > 0:
            return
        step, self._step = self._step, None
        if step is not None and out is not None:  # None: the call raised (torch's always_call hooks)
            self.steps.append(step)

    def _put(self, layer, tap, spec, x, what):
        step = self._step
        if step is None:
            return  # a module called outside a forward call of the wrapped model
        key = (layer, tap)
        if key in step["taps"]:
            raise CaptureError(f"{what}: tap {tap} of layer {layer} recorded twice in one forward call")
        x = x.detach()
        if spec.split is not None:
            sizes = [size_of(s, self.dims) for s in spec.split]
            if x.shape[-1] != sum(sizes):
                raise CaptureError(f"{what}: last dimension {x.shape[-1]}, the declared split {spec.split} sums to "
                                   f"{sum(sizes)}")
            x = torch.split(x, sizes, dim=-1)[spec.part]
        if spec.layout in ("bt", "bht"):
            if x.dim() < 2 or x.shape[0] != 1:
                raise CaptureError(f"{what}: shape {tuple(x.shape)} is not (1, ...) for layout '{spec.layout}'")
            x = x[0]
        if spec.layout in ("bht", "ht"):
            if x.dim() != 3:
                raise CaptureError(f"{what}: shape {tuple(x.shape)} is not (heads, T, head_dim) after the batch")
            x = x.transpose(0, 1)
        self.dtypes[x.dtype] = self.dtypes.get(x.dtype, 0) + 1
        shape = tap_shape(tap, self.dims)
        t = len(step["tokens"])
        per_row = int(np.prod(shape))
        rows = x.shape[0] if x.dim() else 0
        if x.numel() != rows * per_row or rows > t or rows == 0:
            raise CaptureError(f"{what}: shape {tuple(x.shape)} does not hold {tap}'s ({t}, "
                               f"{', '.join(map(str, shape))}) (layout '{spec.layout}')")
        step["taps"][key] = x.to("cpu", torch.float32).reshape((rows,) + shape).numpy()

    def _out_hook(self, layer, tap, spec, path):
        what = f"{tap} (output of {path})"

        def hook(mod, args, out):
            self._put(layer, tap, spec, _tensor(out, spec.result, what), what)
        return hook

    def _in_hook(self, layer, tap, spec, path):
        what = f"{tap} (input of {path})"

        def hook(mod, args, kwargs):
            if isinstance(spec.arg, int) and spec.arg < len(args):
                x = args[spec.arg]
            elif isinstance(spec.arg, str) and spec.arg in kwargs:
                x = kwargs[spec.arg]
            else:
                raise CaptureError(f"{what}: the call has no argument {spec.arg!r}")
            self._put(layer, tap, spec, _tensor(x, 0, what), what)
        return hook

    def _wrap_function(self, orig, name, taps):
        def wrapper(*args, **kwargs):
            result = orig(*args, **kwargs)
            if self._layer is not None:
                for tap, spec in taps:
                    what = f"{tap} (result {spec.result} of {name})"
                    self._put(self._layer, tap, spec, _tensor(result, spec.result, what), what)
            return result
        wrapper.__wrapped__ = orig
        return wrapper

    # -- results -----------------------------------------------------------------------------------------
    def input_ids(self):
        """The tokens of every recorded step, in position order."""
        if not self.steps:
            return np.zeros(0, np.int32)
        return np.concatenate([s["tokens"] for s in self.steps])

    def precision(self):
        """The recorded tensors' dtype as a schema precision (the most frequent one)."""
        if not self.dtypes:
            raise CaptureError("nothing was recorded")
        dt = max(self.dtypes, key=self.dtypes.get)
        if dt not in PRECISIONS:
            raise CaptureError(f"the recorded tensors are {dt}: give precision= (fp64, fp32, bf16 or fp16)")
        return PRECISIONS[dt]

    def taps(self):
        """{(layer, tap): np.float32 (T, ...)} over every step; taps that some step lacks or holds only in part
        are left out and listed in self.absent."""
        if not self.steps:
            raise CaptureError("no forward call of the model was recorded")
        keys = [(-1, t) for t in MODEL_TAPS] + [(i, t) for i in range(self.dims["L"]) for t in LAYER_TAPS]
        out = {}
        for layer, tap in keys:
            if tap not in self.mapping or self.absent.get(tap) or self.absent.get((layer, tap)):
                continue
            parts = []
            for k, s in enumerate(self.steps):
                a = s["taps"].get((layer, tap))
                if a is None or a.shape[0] != len(s["tokens"]):
                    where = "" if layer < 0 else f" of layer {layer}"
                    self.absent[tap if layer < 0 else (layer, tap)] = (
                        f"step {k}{where}: " + ("not recorded" if a is None else
                                                f"{a.shape[0]} of {len(s['tokens'])} rows (logits_to_keep?)"))
                    break
                parts.append(a)
            else:
                out[(layer, tap)] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return out

    def save(self, path, backend="capture", precision=None, **kwargs):
        """Writes this capture as group `backend` of a new schema-v1 file (write_dump's keywords apply)."""
        write_dump(path, {backend: (self, {"precision": precision} if precision else {})}, **kwargs)


def write_dump(path, groups, model=None, tool_version=None, compression=None):
    """Writes {group name: (Capture, {attr: value})} to `path` atomically (PATH.tmp.<pid>, then a rename).

    Every capture must hold the same checkpoint and tokens. The attrs go on the group; `precision` defaults to
    the recorded dtype. model: the root attribute (default: the first capture's directory, absolute).
    compression: None, or a gzip level 1..9 (with the shuffle filter)."""
    if not groups:
        raise CaptureError("no group to write")
    caps = list(groups.values())
    first = caps[0][0]
    ids = first.input_ids()
    for name, (cap, _) in groups.items():
        if not GROUP_NAME.match(name) or name in ("input_ids", "diff"):
            raise CaptureError(f"group name '{name}': 1 to 64 of [A-Za-z0-9_.-], not starting with '.', "
                               "not input_ids or diff")
        if cap.config_json != first.config_json:
            raise CaptureError(f"group '{name}': another config.json than the first group's")
        if not np.array_equal(cap.input_ids(), ids):
            raise CaptureError(f"group '{name}': other tokens than the first group's")
    if len(ids) == 0:
        raise CaptureError("no forward call of the model was recorded")
    data = {}
    for name, (cap, attrs) in groups.items():
        attrs = dict(attrs)
        attrs.setdefault("precision", cap.precision())
        data[name] = (cap.taps(), attrs)
        for k, why in cap.absent.items():
            if why != "not in the mapping":
                tap = k if isinstance(k, str) else f"layers/{k[0]:03d}/{k[1]}"
                print(f"qd_capture: {path}: {name}/{tap} absent: {why}", file=sys.stderr)
    opts = {} if compression is None else dict(compression="gzip", compression_opts=int(compression), shuffle=True)
    if tool_version is None:
        tool_version = f"qd_capture.py (torch {torch.__version__})"
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema"] = SCHEMA
            f.attrs["model"] = model if model is not None else os.path.abspath(first.model_dir)
            f.attrs["config_json"] = first.config_json
            f.attrs["tool_version"] = tool_version
            f.create_dataset("input_ids", data=ids.astype(np.int32))
            for name, (taps, attrs) in data.items():
                cap = groups[name][0]
                g = f.create_group(name)
                if attrs["precision"] not in PRECISIONS.values():
                    raise CaptureError(f"group '{name}': precision '{attrs['precision']}', expected one of "
                                       f"{', '.join(PRECISIONS.values())}")
                for k, v in attrs.items():
                    g.attrs[k] = v
                if len(cap.steps) > 1:
                    g.attrs["step_tokens"] = np.array([len(s["tokens"]) for s in cap.steps], dtype=np.int64)
                for name_ in MODEL_TAPS:
                    if (-1, name_) in taps:
                        g.create_dataset(name_, data=np.ascontiguousarray(taps[(-1, name_)], "<f4"), **opts)
                for i in range(cap.dims["L"]):
                    have = [t for t in LAYER_TAPS if (i, t) in taps]
                    if not have:
                        continue
                    lg = g.create_group(f"layers/{i:03d}")
                    for t in have:
                        lg.create_dataset(t, data=np.ascontiguousarray(taps[(i, t)], "<f4"), **opts)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
