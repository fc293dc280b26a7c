"""Renders the Helm chart ops/helm/sft as `helm template` would, with Helm's
own code (helm-python-sdk bundles Helm v4 as a library: no helm binary, no
cluster), for the render checks in tests/ops.rs.

    render.py [VALUES_JSON] [--name RELEASE] [--namespace NS] [--chart DIR]

VALUES_JSON (default {}) is laid over the chart's values.yaml, like
`helm template -f`. Prints the manifests as one JSON list: every YAML
document of every template, parsed, in template name order, empty ones left
out. When Helm refuses (a template's `fail`, bad values), prints Helm's
message on stderr and exits 1.

Runs from the venv tests/aiortc/setup-venv.sh makes from
tests/helm/requirements.txt (target/helm-venv).
"""

import argparse
import json
import sys
from pathlib import Path

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parents[2] / "ops" / "helm" / "sft"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("values", nargs="?", default="{}", help="values as a JSON object")
    parser.add_argument("--name", default="sft", help="release name (default: sft)")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--chart", default=str(CHART))
    args = parser.parse_args()

    values = json.loads(args.values)
    if not isinstance(values, dict):
        print(f"render.py: values must be a JSON object, not {args.values}", file=sys.stderr)
        return 2
    try:
        with helm.Chart.load(args.chart) as chart:
            manifests = chart.render(values, name=args.name, namespace=args.namespace)
    except helm.HelmError as e:
        print(f"helm: {e}", file=sys.stderr)
        return 1

    documents = []
    for template in sorted(manifests):
        documents.extend(d for d in yaml.safe_load_all(manifests[template]) if d is not None)
    json.dump(documents, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
