// A DPoP client nobody on the team wrote: keys from panva's `jose`, proofs from panva's `dpop`
// (and, for the proofs `dpop` refuses to make, `jose`'s SignJWT with the same key).
// Usage:
//   node dpop_client.mjs key <ES256|Ed25519> <keyfile>      writes the key pair, prints its JWK thumbprint
//   node dpop_client.mjs proofs <keyfile> <url> <token> <other token>
//                                                           prints {name: proof} as JSON
//   node dpop_client.mjs login <keyfile> <url>              prints a proof for POST <url> (no token yet)
//   node dpop_client.mjs proof <keyfile> <url> <token> <nonce>
//                                                           prints a proof for GET <url> with a server nonce
//   node dpop_client.mjs bench <keyfile> <url> <tokens file> <count> <out file>
//                                                           writes <count> lines "<token> <proof>" (GET <url>),
//                                                           the tokens in turn, every proof fresh (make bench)
import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
const require = createRequire(process.env.NODE_TOOLS + "/");
const jose = require("jose");
const DPoP = require("dpop");

const [command, ...args] = process.argv.slice(2);
const b64u = (value) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");

async function load(file) {
  const { alg, jwk } = JSON.parse(readFileSync(file, "utf8"));
  const { d, p, q, dp, dq, qi, ...pub } = jwk; // the public members only
  return {
    alg,
    keypair: {
      privateKey: await jose.importJWK(jwk, alg, { extractable: true }),
      publicKey: await jose.importJWK(pub, alg, { extractable: true }),
    },
    pub,
  };
}

if (command === "key") {
  const [alg, file] = args;
  const keypair = await jose.generateKeyPair(alg, { extractable: true });
  writeFileSync(file, JSON.stringify({ alg, jwk: await jose.exportJWK(keypair.privateKey) }));
  process.stdout.write(await DPoP.calculateThumbprint(keypair.publicKey));
} else if (command === "proofs") {
  const [file, url, token, otherToken] = args;
  const { alg, keypair, pub } = await load(file);
  const other = await jose.generateKeyPair(alg, { extractable: true });
  const ath = b64u(Buffer.from(await crypto.subtle.digest("SHA-256", Buffer.from(token))));
  const now = Math.floor(Date.now() / 1000);
  const claims = { htm: "GET", htu: url, ath };
  const signed = (header, payload, key) =>
    new jose.SignJWT(payload).setProtectedHeader(header).sign(key);
  const proofs = {};
  for (let i = 0; i < 6; i++) {
    proofs[`valid_${i}`] = await DPoP.generateProof(keypair, url, "GET", undefined, token);
  }
  Object.assign(proofs, {
    wrong_key: await DPoP.generateProof(other, url, "GET", undefined, token),
    wrong_htm: await DPoP.generateProof(keypair, url, "POST", undefined, token),
    wrong_htu: await DPoP.generateProof(keypair, url.replace(/\/[^/]*$/, "/elsewhere"), "GET", undefined, token),
    missing_ath: await DPoP.generateProof(keypair, url, "GET"),
    other_token: await DPoP.generateProof(keypair, url, "GET", undefined, otherToken),
    stale_iat: await signed({ alg, typ: "dpop+jwt", jwk: pub }, { ...claims, jti: crypto.randomUUID(), iat: now - 600 },
      keypair.privateKey),
    hmac: await signed({ alg: "HS256", typ: "dpop+jwt", jwk: pub }, { ...claims, jti: crypto.randomUUID(), iat: now },
      new TextEncoder().encode("a shared secret is no proof of a key pair")),
    alg_none: `${b64u({ alg: "none", typ: "dpop+jwt", jwk: pub })}.${b64u({ ...claims, jti: crypto.randomUUID(), iat: now })}.`,
  });
  process.stdout.write(JSON.stringify(proofs));
} else if (command === "login") {
  const [file, url] = args;
  const { keypair } = await load(file);
  process.stdout.write(await DPoP.generateProof(keypair, url, "POST"));
} else if (command === "proof") {
  const [file, url, token, nonce] = args;
  const { keypair } = await load(file);
  process.stdout.write(await DPoP.generateProof(keypair, url, "GET", nonce, token));
} else if (command === "bench") {
  const [file, url, tokensFile, count, out] = args;
  const { keypair } = await load(file);
  const tokens = readFileSync(tokensFile, "utf8").split("\n").filter(Boolean);
  const lines = [];
  for (let start = 0; start < Number(count); start += 1000) {
    const batch = [];
    for (let i = start; i < Math.min(start + 1000, Number(count)); i++) {
      const token = tokens[i % tokens.length];
      batch.push(DPoP.generateProof(keypair, url, "GET", undefined, token).then((proof) => `${token} ${proof}`));
    }
    lines.push(...(await Promise.all(batch)));
  }
  writeFileSync(out, lines.join("\n") + "\n");
} else {
  console.error("usage: dpop_client.mjs key <alg> <keyfile> | proofs <keyfile> <url> <token> <other token> | login <keyfile> <url> | bench <keyfile> <url> <tokens file> <count> <out file>");
  process.exit(2);
}
