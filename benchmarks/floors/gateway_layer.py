"""``crm-gateway serve`` with its filter chain cut down to a layer, to see what each layer costs.

    BENCH_LAYER=paths|identity|full python benchmarks/floors/gateway_layer.py serve -c gateway.yaml

- ``paths``: client address and path only (then the proxy): the gateway's own plumbing
  (server handler, chain, exchange, proxy, metrics) with no session and no policy;
- ``identity``: every filter but the policy decision (session, CRM cookie, 2FA, login);
- ``full``: ``serve`` as it is.

For measurement only (benchmarks/floors.py): a cut-down chain forwards requests the
policy would refuse.
"""

import os
import sys

from gateway import app
from gateway.chain import Chain
from gateway.cli import main
from gateway.config import Config

LAYERS = {
    "paths": lambda name: name in ("ClientIPFilter", "PathFilter"),
    "identity": lambda name: name != "PolicyFilter",
    "full": lambda name: True,
}
keep = LAYERS[os.environ.get("BENCH_LAYER", "full")]
build_chain = app.Gateway.build_chain


def layer_chain(self: app.Gateway, config: Config) -> Chain:
    chain = build_chain(self, config)
    return Chain([f for f in chain.filters if keep(type(f).__name__)], chain.terminal)


app.Gateway.build_chain = layer_chain  # type: ignore[method-assign]
sys.exit(main(sys.argv[1:]))
