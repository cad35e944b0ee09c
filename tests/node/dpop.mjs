// A Node gateway checking DPoP-bound tokens (RFC 9449) with jose alone: the token by the
// issuer's JWKS, the proof by the key in its own header (EmbeddedJWK), that key's RFC 7638
// thumbprint against the token's cnf.jkt, ath against the token, htm/htu against the
// request, iat within 60 s, and a jti seen only once in this process.
// Usage: node dpop.mjs ISSUER_URL < cases.json   (cases: [{token, audience, proof, htm, htu}])
// Prints one JSON result per case: {ok, code}.
import { createHash } from "node:crypto";
import { EmbeddedJWK, calculateJwkThumbprint, createRemoteJWKSet, jwtVerify } from "jose";

const issuer = process.argv[2];
const meta = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
const jwks = createRemoteJWKSet(new URL(meta.jwks_uri));
const seen = new Set();

function fail(code) {
  throw Object.assign(new Error(code), { code });
}

async function check(c) {
  const { payload } = await jwtVerify(c.token, jwks, {
    issuer: meta.issuer, audience: c.audience, typ: "at+jwt", algorithms: ["EdDSA", "ES256"],
  });
  if (!payload.cnf?.jkt) fail("TOKEN_NOT_BOUND");
  if (!c.proof) fail("DPOP_REQUIRED");
  const { payload: proof, protectedHeader } = await jwtVerify(c.proof, EmbeddedJWK, {
    typ: "dpop+jwt", algorithms: meta.dpop_signing_alg_values_supported, maxTokenAge: "60s",
  });
  if ((await calculateJwkThumbprint(protectedHeader.jwk, "sha256")) !== payload.cnf.jkt) fail("DPOP_KEY_MISMATCH");
  const ath = createHash("sha256").update(c.token, "ascii").digest("base64url");
  if (proof.ath !== ath) fail("DPOP_WRONG_ATH");
  if (proof.htm !== c.htm) fail("DPOP_WRONG_METHOD");
  if (proof.htu !== c.htu) fail("DPOP_WRONG_URL");
  const id = `${payload.cnf.jkt}:${proof.jti}`;
  if (seen.has(id)) fail("DPOP_REPLAYED");
  seen.add(id);
  return { ok: true, jkt: payload.cnf.jkt };
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const results = [];
for (const c of JSON.parse(Buffer.concat(chunks).toString("utf8"))) {
  try {
    results.push(await check(c));
  } catch (err) {
    results.push({ ok: false, code: err.code ?? err.name, message: String(err.message) });
  }
}
process.stdout.write(JSON.stringify(results) + "\n");
