"""Running the annotation page's ES modules under Node.js, for tests of their pure parts
(run lengths, .npy parsing, sizes, strokes, the object history) without a browser. Each
script in tests/engine/campaigns/page/<name>.mjs imports the page's modules and exports
`main(input)`; its JSON result comes back."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent / "page"


def run_module_script(name: str, payload: Any) -> Any:
    """Run page/<name>.mjs's main(payload) under node; returns its result."""
    node = shutil.which("node")
    assert node, "Node.js is needed (`make vendor` installs it when npm is missing)"
    program = (
        f'import {{ main }} from "{(SCRIPTS / f"{name}.mjs").as_uri()}";\n'
        "const chunks = []; for await (const c of process.stdin) chunks.push(c);\n"
        "const input = JSON.parse(Buffer.concat(chunks).toString());\n"
        "process.stdout.write(JSON.stringify(await main(input)));\n"
    )
    done = subprocess.run(
        [node, "--input-type=module", "-e", program],
        input=json.dumps(payload).encode(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return json.loads(done.stdout)
