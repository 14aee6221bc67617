"""`greengate-provision issuer`: a test issuer that mints real HC1 certificates."""

import sys
from pathlib import Path

from .issuer import Issuer, qr_png, utc


def add_parser(sub) -> None:
    issuer = sub.add_parser("issuer", help="test issuer: create a signer, mint HC1 certificates")
    isub = issuer.add_subparsers(dest="issuer_command", metavar="ACTION", required=True)

    init = isub.add_parser("init", help="create an issuer key and signer certificate")
    init.add_argument("--dir", required=True, help="directory for signer.key, signer.pem, issuer.json")
    init.add_argument("--alg", choices=("ES256", "PS256"), default="ES256")
    init.add_argument("--country", default="VN")
    init.add_argument("--usage", default="",
                      help="key-usage OIDs to embed: any of v, t, r (default: none, may sign all)")
    init.add_argument("--not-before", default="2020-01-01T00:00:00Z")
    init.add_argument("--not-after", default="2035-01-01T00:00:00Z")
    init.add_argument("--force", action="store_true", help="overwrite an existing issuer")
    init.set_defaults(handler=run_init)

    mint = isub.add_parser("mint", help="mint an HC1 certificate (text and QR PNG)")
    mint.add_argument("--dir", required=True, help="issuer directory (from 'issuer init')")
    mint.add_argument("--type", choices=("v", "t", "r"), required=True)
    mint.add_argument("--iat", required=True, help="issued-at, ISO 8601")
    mint.add_argument("--exp", required=True, help="expiry, ISO 8601")
    mint.add_argument("--family", default="Nguyễn")
    mint.add_argument("--given", default="Văn An")
    mint.add_argument("--dob", default="1990-01-01")
    mint.add_argument("--ci", help="certificate identifier (default: a random URN:UVCI)")
    mint.add_argument("--kid-in", choices=("protected", "unprotected"), default="protected")
    mint.add_argument("--date", help="v: date of the dose (YYYY-MM-DD)")
    mint.add_argument("--dose", type=int, default=1, help="v: dose number")
    mint.add_argument("--of", type=int, default=2, help="v: doses in the series")
    mint.add_argument("--sampled", help="t: sample time, ISO 8601")
    mint.add_argument("--test-type", default="naat", help="t: naat, rat or a LOINC code")
    mint.add_argument("--result", default="negative", help="t: negative or positive")
    mint.add_argument("--first-positive", help="r: date of the first positive test")
    mint.add_argument("--out", help="write OUT.txt and OUT.png (default: print the text)")
    mint.set_defaults(handler=run_mint)


def run_init(args) -> int:
    d = Path(args.dir)
    if (d / "signer.key").exists() and not args.force:
        print(f"greengate-provision: {d / 'signer.key'} exists; use --force to replace it",
              file=sys.stderr)
        return 2
    usage = "".join(sorted(set(args.usage) & set("vtr")))
    if set(args.usage) - set("vtr,"):
        print("greengate-provision: --usage takes letters v, t, r", file=sys.stderr)
        return 2
    issuer = Issuer.create(alg=args.alg, country=args.country, usage=usage or None,
                           not_before=args.not_before, not_after=args.not_after)
    issuer.save(d)
    print(f"issuer {issuer.kid.hex()} ({args.alg}) written to {d}; trust {d / 'signer.pem'}")
    return 0


def run_mint(args) -> int:
    try:
        issuer = Issuer.load(args.dir)
    except FileNotFoundError as exc:
        print(f"greengate-provision: no issuer in {args.dir} ({exc.filename}); "
              "run 'greengate-provision issuer init' first", file=sys.stderr)
        return 2
    person = {"family": args.family, "given": args.given, "dob": args.dob, "ci": args.ci}
    try:
        if args.type == "v":
            _need(args.date, "--date")
            dcc = issuer.vaccination(date=args.date, dose=args.dose, of=args.of, **person)
        elif args.type == "t":
            _need(args.sampled, "--sampled")
            dcc = issuer.test(sampled=args.sampled, test_type=args.test_type,
                              result=args.result, **person)
        else:
            _need(args.first_positive, "--first-positive")
            dcc = issuer.recovery(first_positive=args.first_positive, **person)
        text = issuer.mint(dcc, iat=utc(args.iat), exp=utc(args.exp), kid_in=args.kid_in)
    except ValueError as exc:
        print(f"greengate-provision: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out + ".txt").write_text(text + "\n")
        qr_png(text, args.out + ".png")
        print(f"wrote {args.out}.txt and {args.out}.png")
    else:
        print(text)
    return 0


def _need(value, flag: str) -> None:
    if not value:
        raise ValueError(f"{flag} is required for this certificate type")
