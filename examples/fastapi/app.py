"""An upstream behind authgate that believes only the signed identity assertion.

Whoever can reach this app directly can send any ``X-Auth-User`` they like;
they cannot sign an assertion with the gateway's key. So the identity comes
from ``X-Auth-Assertion``, verified offline against the gateway's JWKS: the
signature (key chosen by ``kid``), ``iss``, ``aud`` (this app, so an assertion
made for another upstream is refused) and ``exp``.

Settings (environment):
  AUTHGATE_JWKS_URL   the gateway's JWKS, e.g. https://gw.example/.well-known/jwks.json
  AUTHGATE_AUDIENCE   this app as the route names it: the route's ``audience``,
                      by default the route's upstream origin (http://127.0.0.1:9000)
  AUTHGATE_ISSUER     ``[jwt] issuer`` (default "authgate")
  AUTHGATE_ASSERTION_HEADER  ``[identity] assertion_header`` (default X-Auth-Assertion)

Run: uvicorn app:app --port 9000
"""

import os
from dataclasses import dataclass, field

import jwt
from fastapi import Depends, FastAPI, HTTPException, Request

JWKS_URL = os.environ.get("AUTHGATE_JWKS_URL", "http://127.0.0.1:8080/.well-known/jwks.json")
AUDIENCE = os.environ.get("AUTHGATE_AUDIENCE", "http://127.0.0.1:9000")
ISSUER = os.environ.get("AUTHGATE_ISSUER", "authgate")
ASSERTION_HEADER = os.environ.get("AUTHGATE_ASSERTION_HEADER", "X-Auth-Assertion")
# The algorithms authgate signs assertions with. Never take the token's own
# "alg" on trust: a list pins what the key may verify.
ALGORITHMS = ["ES256", "EdDSA"]
# A few seconds for clocks that disagree; the assertion lives 60 s by default.
LEEWAY_SECONDS = 5

# Fetches the JWKS once and keeps it; a kid it has not seen (the gateway's
# key was rotated) makes it fetch again.
jwks_client = jwt.PyJWKClient(JWKS_URL, cache_keys=True, lifespan=300)

app = FastAPI(title="authgate upstream example")


@dataclass
class User:
    name: str
    email: str | None = None
    roles: list[str] = field(default_factory=list)


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail)


# A plain (sync) function: PyJWKClient fetches with blocking I/O, and FastAPI
# runs sync dependencies in its thread pool, off the event loop.
def get_current_user(request: Request) -> User:
    token = request.headers.get(ASSERTION_HEADER)
    if not token:
        # X-Auth-User and friends are ignored here on purpose: anyone who
        # reaches this app without the gateway can send them.
        raise unauthorized("no identity assertion")
    try:
        signing_key = jwks_client.get_signing_key_from_jwt(token)
    except jwt.PyJWKClientConnectionError as e:
        raise HTTPException(status_code=503, detail="cannot fetch the gateway's keys") from e
    except (jwt.PyJWKClientError, jwt.DecodeError) as e:
        # Not a JWT, or signed by a key the gateway does not publish.
        raise unauthorized("identity assertion from an unknown key") from e
    try:
        claims = jwt.decode(
            token,
            signing_key.key,
            algorithms=ALGORITHMS,
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.InvalidTokenError as e:
        # Bad signature, expired, another audience or issuer.
        raise unauthorized(f"invalid identity assertion: {e}") from e
    roles = claims.get("roles", [])
    if not isinstance(roles, list):
        raise unauthorized("invalid identity assertion: roles is not a list")
    return User(name=claims["sub"], email=claims.get("email"), roles=roles)


@app.get("/whoami")
def whoami(user: User = Depends(get_current_user)) -> dict:
    return {"user": user.name, "email": user.email, "roles": user.roles}


@app.get("/healthz")
def healthz() -> dict:
    # Unauthenticated, so a process supervisor (or the test) can tell the
    # app is up.
    return {"ok": True}
