// PlateBridge user stream token, minted by the portal (Vercel) with `jose`.
//
// Plain ES module for Node >= 20 (and any runtime with WebCrypto, e.g. Vercel
// functions). docs/examples/stream-token.ts is the same code with TypeScript
// types. Contract: docs/portal-integration.md; verifier: protocol/tokens.py.
//
//   import { mintStreamToken } from "./stream-token.mjs";
//   const token = await mintStreamToken({
//     secret: process.env.PLATEBRIDGE_USER_TOKEN_SECRET, kid: process.env.PLATEBRIDGE_USER_TOKEN_KID,
//     userId: session.user.id, cameraId: "gate-camera-1", podId: "main-gate-pod",
//   });
//
// CLI (used by tests/portal/test_token_example.py):
//   node docs/examples/stream-token.mjs '{"userId":"u1","cameraId":"cam-1","podId":"pod-1"}'
// prints the token. "secret" may be omitted from the JSON: PLATEBRIDGE_USER_TOKEN_SECRET (or,
// legacy, POD_STREAM_SECRET) is used then (keeps the secret out of `ps`).

import { realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { SignJWT } from "jose";

/** Audience every user stream token must carry. */
export const STREAM_AUDIENCE = "platebridge-stream";
/** The gateway's default `max_token_ttl` (s): tokens whose exp lies further ahead are refused. */
export const MAX_TOKEN_TTL_SECONDS = 900;

const DNS_LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/;
const CAMERA_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/**
 * @typedef {object} StreamTokenOptions
 * @property {string} secret PLATEBRIDGE_USER_TOKEN_SECRET (or the secret of `kid`), shared with the gateway only; used as its UTF-8 bytes, never base64-decoded; >= 32 bytes
 * @property {string} [kid] key id for rotation (PLATEBRIDGE_USER_TOKEN_KID); omit while the gateway has one `user_token_secret`
 * @property {string} userId the portal's user id (claim `user_id`, also `sub`)
 * @property {string} cameraId camera id: 1-64 of A-Za-z0-9_.- starting alphanumeric, no ".."
 * @property {string} podId the pod's id, a lower-case DNS label (also its tailnet host name)
 * @property {number} [ttlSeconds] lifetime in seconds (default 300); only gates the start of a viewing session
 * @property {number} [maxTtlSeconds] refuse longer lifetimes (default 900, the gateway's `max_token_ttl`)
 * @property {number} [now] current time in Unix seconds (tests)
 */

/**
 * Mint a user stream token (HS256 JWT) for one camera.
 * @param {StreamTokenOptions} opts
 * @returns {Promise<string>} the compact JWS
 */
export async function mintStreamToken({
  secret,
  kid,
  userId,
  cameraId,
  podId,
  ttlSeconds = 300,
  maxTtlSeconds = MAX_TOKEN_TTL_SECONDS,
  now = Date.now() / 1000,
}) {
  const key = new TextEncoder().encode(secret ?? "");
  if (key.length < 32) throw new Error("stream secret must be at least 32 bytes");
  if (typeof userId !== "string" || userId.length === 0 || userId.length > 256) {
    throw new Error("userId must be a non-empty string (<= 256 chars)");
  }
  if (typeof cameraId !== "string" || !CAMERA_ID.test(cameraId) || cameraId.includes("..")) {
    throw new Error(`cameraId ${JSON.stringify(cameraId)} is not a valid camera id`);
  }
  if (typeof podId !== "string" || !DNS_LABEL.test(podId)) {
    throw new Error(`podId ${JSON.stringify(podId)} is not a lower-case DNS label`);
  }
  if (!Number.isFinite(ttlSeconds) || ttlSeconds <= 0 || ttlSeconds > maxTtlSeconds) {
    throw new Error(`ttlSeconds must be in (0, ${maxTtlSeconds}]`);
  }
  const iat = Math.floor(now);
  /** @type {import("jose").JWTHeaderParameters} */
  const header = kid ? { alg: "HS256", kid } : { alg: "HS256" };
  return new SignJWT({ user_id: userId, camera_id: cameraId, pod_id: podId })
    .setProtectedHeader(header)
    .setAudience(STREAM_AUDIENCE)
    .setSubject(userId)
    .setIssuedAt(iat)
    .setExpirationTime(iat + Math.floor(ttlSeconds))
    .sign(key);
}

/** @returns {boolean} whether this file is the program node was asked to run */
function isMain() {
  if (!process.argv[1]) return false;
  try {
    return realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) {
  try {
    /** @type {Partial<StreamTokenOptions>} */
    const args = JSON.parse(process.argv[2] ?? "{}");
    const token = await mintStreamToken({
      ...args,
      secret: args.secret ?? process.env.PLATEBRIDGE_USER_TOKEN_SECRET ?? process.env.POD_STREAM_SECRET ?? "",
      userId: args.userId ?? "",
      cameraId: args.cameraId ?? "",
      podId: args.podId ?? "",
    });
    process.stdout.write(token + "\n");
  } catch (err) {
    process.stderr.write(`stream-token: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 2;
  }
}
