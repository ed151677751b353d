"""Loading an artifact never runs code from it: crafted graph.json files, each an attack shape
(a method chain to os.system, objects smuggled in as values, code pasted into the generated
forward through names), are refused with one DCPError before anything runs."""
import copy
import json
import shutil

import pytest
import torch
from torch import nn

import compiler
from compiler.artifact import GRAPH, load, save_module
from compiler.graph_io import spec_to_graph
from passes.errors import DCPError

from conftest import DATA


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 1, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return torch.sigmoid(self.head(y.view(y.size(0), 4, y.size(2), -1)))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = save_module(Tiny().eval(), tmp_path_factory.mktemp("art") / "tiny")
    load(path)(torch.randn(1, 4, 8, 8))  # the untouched artifact loads and runs
    return path


def node(name, op, target, args=(), kwargs=None):
    return {"name": name, "op": op, "target": target, "args": {"tuple": list(args)},
            "kwargs": {"dict": kwargs or {}}}


def ref(name):
    return {"node": name}


def shell(sentinel):
    return f"touch {sentinel}"


def getattribute_chain(spec, sentinel):
    """The issue's attack: x.__getattribute__('backward').__globals__['torch'].os.system(...)."""
    chain = [node("a", "call_method", "__getattribute__", [ref("x"), "backward"]),
             node("b", "call_method", "__getattribute__", [ref("a"), "__globals__"]),
             node("c", "call_method", "__getitem__", [ref("b"), "torch"]),
             node("d", "call_method", "__getattribute__", [ref("c"), "os"]),
             node("e", "call_method", "system", [ref("d"), shell(sentinel)])]
    spec["nodes"][-1:-1] = chain


def dtype_dunder(spec, sentinel):
    spec["nodes"][-1:-1] = [node("t", "call_method", "to", [ref("x")], {"dtype": {"dtype": "__dict__"}})]


def dtype_not_a_dtype(spec, sentinel):
    spec["nodes"][-1:-1] = [node("t", "call_method", "to", [ref("x"), {"dtype": "load"}])]


def function_os_system(spec, sentinel):
    spec["nodes"][-1:-1] = [node("s", "call_function", "os.system", [shell(sentinel)])]


def function_eval(spec, sentinel):
    spec["nodes"][-1:-1] = [node("s", "call_function", "builtins.eval", [f"__import__('os').system('{shell(sentinel)}')"])]


def method_dunder_class(spec, sentinel):
    spec["nodes"][-1:-1] = [node("k", "call_method", "__class__", [ref("x")])]


def method_private(spec, sentinel):
    spec["nodes"][-1:-1] = [node("k", "call_method", "_foo", [ref("x")])]


def method_code_in_name(spec, sentinel):
    spec["nodes"][-1:-1] = [node("k", "call_method", f"view(); __import__('os').system('{shell(sentinel)}'); x.view",
                                 [ref("x")])]


def method_on_a_constant(spec, sentinel):
    spec["nodes"][-1:-1] = [node("k", "call_method", "split", ["a b"])]


def module_base_class(spec, sentinel):
    spec["modules"]["conv"]["type"] = "Module"


def module_not_nn(spec, sentinel):
    spec["modules"]["conv"]["type"] = "os.system"


def module_container(spec, sentinel):
    spec["modules"]["conv"] = {"type": "Sequential", "kwargs": {}}


def unknown_op(spec, sentinel):
    spec["nodes"][-1:-1] = [node("k", "call_eval", "print", [ref("x")])]


def get_attr_missing(spec, sentinel):
    spec["nodes"][-1:-1] = [node("k", "get_attr", "conv.nothing")]


def get_attr_dunder(spec, sentinel):
    spec["nodes"][-1:-1] = [node("k", "get_attr", "conv.__dict__")]


def get_attr_code_in_name(spec, sentinel):
    spec["nodes"][-1:-1] = [node("k", "get_attr", f'a"); __import__("os").system("{shell(sentinel)}"); ("')]


def undefined_node(spec, sentinel):
    spec["nodes"][-1:-1] = [node("k", "call_function", "torch.relu", [ref("nowhere")])]


def placeholder_code_in_name(spec, sentinel):
    spec["nodes"][0]["target"] = f"x, y=__import__('os').system('{shell(sentinel)}')"


def placeholder_twice(spec, sentinel):
    spec["nodes"][1:1] = [node("x2", "placeholder", "x")]


def placeholder_self(spec, sentinel):
    spec["nodes"][1:1] = [node("x2", "placeholder", "self")]


def node_name_with_code(spec, sentinel):
    """Node names are sanitised by torch.fx: this one must load and run, harmlessly."""
    name = f"k = __import__('os').system('{shell(sentinel)}'); k"
    spec["nodes"][-1:-1] = [node(name, "call_function", "torch.relu", [ref("x")])]
    spec["nodes"][-1]["args"] = {"tuple": [ref(name)]}


def kwarg_code_in_name(spec, sentinel):
    spec["nodes"][-1:-1] = [node("k", "call_function", "torch.relu", [ref("x")],
                                 {f"inplace=__import__('os').system('{shell(sentinel)}'), z": 1})]


def module_code_in_name(spec, sentinel):
    spec["modules"][f'm"); __import__("os").system("{shell(sentinel)}"); ("'] = {"type": "ReLU", "kwargs": {}}


def raw_list_value(spec, sentinel):
    spec["nodes"][-1:-1] = [node("k", "call_function", "torch.relu", [[{"node": "x"}]])]


def second_output(spec, sentinel):
    spec["nodes"].append(copy.deepcopy(spec["nodes"][-1]) | {"name": "output_2"})


ATTACKS = [getattribute_chain, dtype_dunder, dtype_not_a_dtype, function_os_system, function_eval,
           method_dunder_class, method_private, method_code_in_name, method_on_a_constant, module_base_class,
           module_not_nn, module_container, unknown_op, get_attr_missing, get_attr_dunder, get_attr_code_in_name,
           undefined_node, placeholder_code_in_name, placeholder_twice, placeholder_self, kwarg_code_in_name, module_code_in_name, raw_list_value,
           second_output]


def crafted(artifact, tmp_path, attack):
    folder, sentinel = tmp_path / "crafted", tmp_path / "PWNED"
    shutil.copytree(artifact, folder)
    spec = json.loads((folder / GRAPH).read_text())
    assert spec["nodes"][0]["op"] == "placeholder" and spec["nodes"][0]["name"] == "x"
    attack(spec, sentinel)
    (folder / GRAPH).write_text(json.dumps(spec))
    return folder, sentinel


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda f: f.__name__)
def test_a_crafted_graph_is_refused_before_anything_runs(artifact, tmp_path, attack):
    folder, sentinel = crafted(artifact, tmp_path, attack)
    with pytest.raises(DCPError) as e:
        model = load(folder)
        model(torch.randn(1, 4, 8, 8))  # only reached if loading wrongly succeeded
    assert "\n" not in str(e.value)
    assert not sentinel.exists()


def test_node_names_cannot_carry_code(artifact, tmp_path):
    folder, sentinel = crafted(artifact, tmp_path, node_name_with_code)
    y = load(folder)(torch.randn(1, 4, 8, 8))
    assert y.shape == (1, 4, 8, 8) and (y >= 0).all()  # the output is now relu(x): the crafted node ran
    assert not sentinel.exists()


def test_the_attack_is_real_without_the_checks(artifact, tmp_path, monkeypatch):
    """The getattribute chain does run a shell command when the graph is built unchecked."""
    import compiler.graph_io as graph_io
    folder, sentinel = crafted(artifact, tmp_path, getattribute_chain)
    monkeypatch.setattr(graph_io, "_check_node", lambda n, env, modules, weights: (
        n["op"], graph_io.FUNCTIONS.get(n["target"], n["target"]), graph_io._decode(n["args"], env),
        graph_io._decode(n["kwargs"], env)))
    load(folder)(torch.randn(1, 4, 8, 8))
    assert sentinel.exists()


def test_weights_that_do_not_fit_are_one_dcp_error(artifact, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(artifact, folder)
    state = torch.load(folder / "weights.pt", weights_only=True)
    state["conv.weight"] = torch.zeros(3, 3)
    torch.save(state, folder / "weights.pt")
    with pytest.raises(DCPError, match="weights do not fit"):
        load(folder)
    torch.save([1, 2], folder / "weights.pt")
    with pytest.raises(DCPError, match="not a state_dict"):
        load(folder)


def test_every_compiled_graph_round_trips(tmp_path):
    import matting
    res = compiler.compile(matting.dim(width=0.125), torch.randn(1, 4, 64, 64), ratio=0.5)
    gm = load(compiler.save(res, tmp_path / "dim"))
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        assert torch.equal(gm(x), res.module.eval()(x))


def test_saving_a_method_off_the_allow_list_is_refused_at_save_time(tmp_path):
    class Odd(nn.Module):
        def forward(self, x):
            return x.cumsum(1)

    with pytest.raises(DCPError, match=r"method \.cumsum\(\) is not on the allow-list"):
        save_module(Odd(), tmp_path / "odd")
    assert not (tmp_path / "odd").exists()


def test_spec_to_graph_refuses_a_non_dict_spec():
    with pytest.raises(DCPError):
        spec_to_graph([], {})


def test_dcp_matte_on_a_crafted_folder_exits_2_with_one_line_and_runs_nothing(dcp, artifact, tmp_path):
    folder, sentinel = crafted(artifact, tmp_path, getattribute_chain)
    r = dcp("matte", "--model", folder, "--image", DATA / "lemur_small.png", "--trimap",
            DATA / "lemur_small_trimap.png", "-o", tmp_path / "alpha.png", "--device", "cpu")
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if not line.startswith("warning:")]  # the RGBA note
    assert len(errors) == 1 and errors[0].startswith("dcp matte: error: bad graph file: method '__getattribute__'")
    assert not sentinel.exists() and not (tmp_path / "alpha.png").exists()
