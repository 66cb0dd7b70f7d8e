#!/bin/sh
# Checks protocol/tests/vectors.json (written by protocol/tests/vectors.rs) with
# implementations rigd did not write: eth-account (EIP-712 struct hashes, digests, secp256k1
# recovery), cryptography (P-256 verification) and hashlib (unit digests); see
# verify_vectors.py for what is compared.
#
# Installs the pinned PyPI wheels (the whole dependency closure, no builds) into a venv that
# is created once and reused:
#   RIGD_PY_VENV  venv directory (default: $HOME/.cache/rigd-py-venv)
#   PYTHON        interpreter that creates it (default: python3, 3.11 or newer)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
venv=${RIGD_PY_VENV:-$HOME/.cache/rigd-py-venv}
python=${PYTHON:-python3}
wheels="eth-account==0.14.0 cryptography==50.0.2 pycryptodome==3.24.1 \
annotated-types==0.8.0 bitarray==3.12.3 cffi==2.1.1 ckzg==2.1.8 cytoolz==1.2.0 \
eth-abi==6.0.0 eth-hash==0.8.0 eth-keyfile==0.10.0 eth-keys==0.8.0 eth-rlp==3.0.0 \
eth-typing==6.0.0 eth-utils==6.0.0 hexbytes==2.0.0 parsimonious==0.10.0 py-ecc==8.0.0 \
pycparser==3.12 pydantic==2.14.4 pydantic-core==2.50.5 regex==2026.11.19 rlp==5.0.0 \
toolz==1.2.0 typing-extensions==4.16.0 typing-inspection==0.4.5"
stamp="$venv/rigd-wheels"

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wheels" ]; then
    echo "check_vectors: installing eth-account, cryptography and their pinned dependencies into $venv" >&2
    rm -f "$stamp"
    "$python" -m venv "$venv"
    # shellcheck disable=SC2086 # word splitting of the pinned list is intended
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-deps --only-binary=:all: $wheels
    echo "$wheels" >"$stamp"
fi

exec "$venv/bin/python" "$here/verify_vectors.py" "$here/vectors.json"
