#!/usr/bin/env bash
# GreenGate demo: end-to-end verification of sample certificates, fully offline.
#
# Creates a throw-away test issuer, mints two vaccination certificates and runs
# them through the kiosk verifier exactly as a checkpoint would:
#   1. a QR image of a dose given on 2021-09-01            -> expected GREEN
#   2. the HC1 text of a dose given on 2021-09-25 (too recent) -> expected RED
#
# README command 1 (also `make demo`): sets up the machine first (idempotent).
# KEEP_DEMO_DIR=1 keeps the temporary directory for inspection.
# Exit status: 0 if both verdicts are as expected, 1 otherwise.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh

BIN=.venv/bin
PROVISION=$BIN/greengate-provision
KIOSK=$BIN/greengate-kiosk
CHECK_AT=2021-10-05T08:00:00Z
POLICY=hcmc-2021

for tool in "$PROVISION" "$KIOSK"; do
    if [[ ! -x $tool ]]; then
        echo "demo: $tool not found - run 'make setup' (or 'make demo') first" >&2
        exit 2
    fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/greengate-demo.XXXXXX")
if [[ ${KEEP_DEMO_DIR:-0} == 1 ]]; then
    trap 'echo; echo "(demo files kept in $tmp)"' EXIT
else
    trap 'rm -rf "$tmp"' EXIT
fi

rule() { printf '%s\n' "------------------------------------------------------------------------"; }

cat <<EOF
========================================================================
 GreenGate demo - offline verification of EU Digital COVID Certificates
========================================================================
A throw-away test issuer signs two vaccination certificates (dose 1 of 2).
The kiosk verifier then checks them as a checkpoint would on $CHECK_AT,
using only the issuer's public certificate as trust anchor and the
'$POLICY' entry policy - no network involved.

  1. scanned from a QR image,  vaccinated 2021-09-01  -> expected GREEN
  2. pasted as HC1 text,       vaccinated 2021-09-25  -> expected RED
     (too recent on the check date)

Working directory: $tmp
EOF

rule
echo "Provisioning test issuer ..."
"$PROVISION" issuer init --dir "$tmp/issuer"

echo "Minting certificate 1 (vaccinated 2021-09-01) ..."
"$PROVISION" issuer mint --dir "$tmp/issuer" --type v --dose 1 --of 2 \
    --date 2021-09-01 --iat 2021-09-01T00:00:00Z --exp 2022-09-01T00:00:00Z \
    --out "$tmp/vacc"

echo "Minting certificate 2 (vaccinated 2021-09-25) ..."
"$PROVISION" issuer mint --dir "$tmp/issuer" --type v --dose 1 --of 2 \
    --date 2021-09-25 --iat 2021-09-25T00:00:00Z --exp 2022-09-25T00:00:00Z \
    --out "$tmp/recent"

for f in "$tmp/vacc.png" "$tmp/vacc.txt" "$tmp/recent.txt"; do
    [[ -s $f ]] || { echo "demo: expected $f to be written by the mint step" >&2; exit 2; }
done

failures=0

# verify TITLE EXPECTED(GREEN|RED) ARGS... ; kiosk exit 0 = GREEN, 1 = RED.
verify() {
    local title=$1 expected=$2 rc=0 got
    shift 2
    rule
    echo "$title"
    echo
    "$KIOSK" verify "$@" --trust "$tmp/issuer/signer.pem" --at "$CHECK_AT" --policy "$POLICY" || rc=$?
    case $rc in
        0) got=GREEN ;;
        1) got=RED ;;
        *) echo "demo: greengate-kiosk verify failed with exit code $rc" >&2; exit "$rc" ;;
    esac
    echo
    if [[ $got == "$expected" ]]; then
        echo "=> $got (expected $expected) - OK"
    else
        echo "=> $got, but expected $expected - UNEXPECTED"
        failures=$((failures + 1))
    fi
}

verify "Certificate 1: QR image $tmp/vacc.png" GREEN --image "$tmp/vacc.png"
verify "Certificate 2: HC1 text from $tmp/recent.txt" RED "$(cat "$tmp/recent.txt")"

rule
if [[ $failures -eq 0 ]]; then
    echo "Demo finished: both verdicts as expected."
else
    echo "Demo finished: $failures verdict(s) differ from the expected result." >&2
    exit 1
fi
