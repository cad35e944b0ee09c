// A gateway that knows only the issuer URL: discovery, then jose's remote JWKS and jwtVerify,
// then the input binding recomputed with a JCS (RFC 8785) library.
// Usage: node verify.mjs ISSUER_URL < cases.json
//   (cases: [{token, audience, inputs_json?, check_status?}])
// Prints one JSON result per case: {ok, code, claims, binding, binding_ok, revoked}.
import { createHash } from "node:crypto";
import { inflateSync } from "node:zlib";
import { createRemoteJWKSet, jwtVerify } from "jose";
import canonicalize from "canonicalize";

const issuer = process.argv[2];
const meta = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
const jwks = createRemoteJWKSet(new URL(meta.jwks_uri)); // jose's defaults, as a gateway has them

function binding(payload, inputsJson) {
  // JSON.parse reads 1e2 as 100 and keeps non-ASCII text as it is, as any JSON parser does.
  const doc = { agent: payload.sub, action: payload.action, inputs: JSON.parse(inputsJson) };
  return "sha256:" + createHash("sha256").update(canonicalize(doc), "utf8").digest("hex");
}

// The token's bit in its status list (draft-ietf-oauth-status-list), checked with jose too.
async function revoked(payload) {
  const { idx, uri } = payload.status.status_list;
  const text = await (await fetch(uri)).text();
  const { payload: list } = await jwtVerify(text, jwks, {
    issuer: meta.issuer,
    subject: uri,
    typ: "statuslist+jwt",
    algorithms: ["ES256"],
  });
  const bits = inflateSync(Buffer.from(list.status_list.lst, "base64url"));
  if (idx >= bits.length * 8) throw Object.assign(new Error("index out of range"), { code: "STATUS_INDEX" });
  return ((bits[idx >> 3] >> (idx & 7)) & 1) === 1;
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const results = [];
for (const c of JSON.parse(Buffer.concat(chunks).toString("utf8"))) {
  try {
    const { payload } = await jwtVerify(c.token, jwks, {
      issuer: meta.issuer,
      audience: c.audience,
      typ: "at+jwt",
      algorithms: ["EdDSA", "ES256"],
      requiredClaims: ["iss", "sub", "aud", "exp", "iat", "jti", "client_id"],
    });
    const result = { ok: true, claims: payload };
    if (c.check_status) {
      result.revoked = await revoked(payload);
      result.ok = !result.revoked;
      if (result.revoked) result.code = "TOKEN_REVOKED";
    }
    if (c.inputs_json !== undefined) {
      result.binding = binding(payload, c.inputs_json);
      result.binding_ok = result.binding === payload.ibh;
    }
    results.push(result);
  } catch (err) {
    results.push({ ok: false, code: err.code ?? err.name, message: String(err.message) });
  }
}
process.stdout.write(JSON.stringify(results) + "\n");
