import pytest

from harmony_core import registry
from harmony_core.errors import MethodUnavailable
from harmony_core.registry import Availability, Method
from harmony_core.studio.compare import run_methods
from harmony_core.types import HarmonizationRequest


class NeedsWeights(Method):
    name, family, title, summary = "needs-weights", "network", "x", "x"

    def available(self):
        return Availability(False, "weights missing: put them in weights/x")

    def harmonize(self, request, progress):
        raise AssertionError("must not run")


def test_unavailable_method_is_reported_and_the_others_still_run(scene, monkeypatch):
    real, composite, mask = scene
    monkeypatch.setitem(registry._FACTORIES, NeedsWeights.name, NeedsWeights)
    monkeypatch.delitem(registry._INSTANCES, NeedsWeights.name, raising=False)
    request = HarmonizationRequest(composite, mask, ground_truth=real)
    states = list(run_methods(request, ["needs-weights", "reinhard"], lambda f, m: None))
    final = states[-1]
    assert len(states) == 2
    assert final.status[0][0] == "needs-weights" and final.status[0][1].startswith("not available")
    assert "weights missing" in final.status[0][1]
    assert final.status[1][:2] == ["reinhard", "done"]
    assert [row[0] for row in final.metrics] == ["reinhard"] and list(final.results) == ["reinhard"]


def test_unavailable_method_raises_with_reason(scene):
    _, composite, mask = scene
    with pytest.raises(MethodUnavailable, match="weights missing"):
        NeedsWeights().run(HarmonizationRequest(composite, mask))
