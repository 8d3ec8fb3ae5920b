"""`${VAR}` and `${file:PATH}` in a connector config's values (cdc/config.py): the environment variable's value,
or the secret in a file (a Docker/Kubernetes secret, systemd's LoadCredential=) without its trailing newline.
A relative PATH is relative to the config file's directory; PATH may hold ${VAR}s
(`${file:${CREDENTIALS_DIRECTORY}/pos_password}`). What a file holds is remembered as a secret
(cdc/secrets.py): it is masked wherever pos-cdc shows text."""

from __future__ import annotations

import os
import re
from pathlib import Path

from cdc.secrets import read_secret_file, remember

NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# a file's path may itself hold ${VAR}s: ${file:${CREDENTIALS_DIRECTORY}/pos_password} (systemd's LoadCredential=)
VAR_RE = re.compile(rf"\$\{{(?:file:((?:\$\{{{NAME}\}}|[^}}])*)|({NAME}))\}}")


def expand(text: str, where: str, config_dir: Path, problems: list[str]) -> str:
    """`text` with its `${...}` replaced; each one that cannot be is a problem `where: message` (where is
    `FILE:LINE: field`) and is replaced by nothing, so that the rest of the file is still checked."""

    def sub(m: re.Match) -> str:
        if m.group(2) is not None:
            name = m.group(2)
            if name not in os.environ:
                problems.append(
                    f"{where}: environment variable {name} is not set (export it, or write the value in the file)"
                )
                return ""
            return os.environ[name]
        raw = m.group(1).strip()
        if "${" in raw:
            before = len(problems)
            raw = VAR_RE.sub(sub, raw)
            if len(problems) > before:
                return ""  # the path's variable is unset: said once
        if not raw:
            problems.append(f"{where}: ${{file:}} needs a path, e.g. ${{file:/run/secrets/pos_password}}")
            return ""
        path = Path(raw).expanduser()
        path = path if path.is_absolute() else config_dir / path
        try:
            secret = read_secret_file(path)
        except OSError as e:
            problems.append(
                f"{where}: cannot read secret file {path}: {e.strerror or e} (create it, or give pos-cdc's "
                "user read access to it)"
            )
            return ""
        except (ValueError, UnicodeDecodeError) as e:
            why = "is empty" if isinstance(e, ValueError) else "is not UTF-8 text"
            problems.append(f"{where}: secret file {path} {why} (put the secret in it)")
            return ""
        remember(secret)
        return secret

    return VAR_RE.sub(sub, text)
