"""The README's register_op example runs as written and does what it says."""
import pathlib
import re

from passes import registry

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _snippet() -> str:
    text = README.read_text()
    section = text.split("## Teaching the compiler a custom layer", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_register_op_example_runs():
    namespace = {}
    try:
        exec(compile(_snippet(), str(README), "exec"), namespace)  # its own asserts check the result
        res, scale = namespace["res"], namespace["Scale"]
        assert registry.lookup_module(scale(2)).reason == "one factor per channel"
        assert res.report["verify"]["masked_rel"] < 1e-5
        assert res.kept["1"].tolist() == res.kept["0"].tolist()  # the Scale kept the conv's channels
    finally:
        registry._MODULES.pop(namespace.get("Scale"), None)
        registry._module_cache.clear()
