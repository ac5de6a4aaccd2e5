"""Keys and tokens for the JWT tests, made by a real JOSE library (PyJWT
with `cryptography`). Reads a spec on stdin:

    {"keys": {"NAME": "RSA" | "P-256" | "P-384" | "Ed25519" | "oct", ...},
     "tokens": [{"key": NAME, "alg": "RS256", "kid": "k1"?, "claims": {...},
                 "tamper": false?}, ...]}

and writes {"keys": {NAME: {"jwk": {...}, "pem": "..."} or {"secret": "..."}},
"tokens": ["...", ...]}. A tampered token has its payload replaced after
signing (the signature no longer covers it).
"""
import base64
import json
import secrets
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def generate(kind):
    if kind == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "P-256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "P-384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "oct":
        return secrets.token_urlsafe(32)
    raise SystemExit(f"unknown key kind {kind}")


def public(kind, key):
    if kind == "oct":
        return {"secret": key}
    pub = key.public_key()
    to_jwk = {"RSA": RSAAlgorithm, "P-256": ECAlgorithm, "P-384": ECAlgorithm, "Ed25519": OKPAlgorithm}[kind].to_jwk
    pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"jwk": to_jwk(pub, as_dict=True), "pem": pem.decode()}


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main():
    spec = json.load(sys.stdin)
    kinds = spec["keys"]
    private = {name: generate(kind) for name, kind in kinds.items()}
    tokens = []
    for t in spec["tokens"]:
        headers = {"kid": t["kid"]} if t.get("kid") else None
        token = jwt.encode(t["claims"], private[t["key"]], algorithm=t["alg"], headers=headers)
        if t.get("tamper"):
            head, _, sig = token.split(".")
            forged = dict(t["claims"], sub="mallory")
            token = f"{head}.{b64(json.dumps(forged).encode())}.{sig}"
        tokens.append(token)
    keys = {name: public(kinds[name], key) for name, key in private.items()}
    json.dump({"keys": keys, "tokens": tokens}, sys.stdout)


main()
