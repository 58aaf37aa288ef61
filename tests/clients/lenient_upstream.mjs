// An upstream that reads requests the way common frameworks do, for the scope-rule tests:
// Express 4's defaults (routes match case-insensitively, a trailing slash is ignored), the
// method-override package honouring X-HTTP-Method-Override (and X-HTTP-Method, X-Method-Override),
// and the path percent-decoded before routing, as Spring (before 6) and many others do.
// Every handler answers what it ran and as whom: {handler, method, user, scopes, cookie}.
// Usage: node lenient_upstream.mjs <port>
import { createRequire } from "node:module";
const require = createRequire(process.env.NODE_TOOLS + "/");
const express = require("express");
const methodOverride = require("method-override");

const app = express();
for (const header of ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"]) {
  app.use(methodOverride(header));
}
// decode %XX in the path before routing (Spring's UrlPathHelper did, with urlDecode on)
app.use((req, _res, next) => {
  const [path, query] = req.url.split(/\?(.*)/s);
  try {
    req.url = decodeURIComponent(path) + (query !== undefined ? "?" + query : "");
  } catch {}
  next();
});
const answer = (handler) => (req, res) =>
  res.json({
    handler,
    method: req.method,
    user: req.get("x-multitokens-user") ?? null,
    scopes: req.get("x-multitokens-scopes") ?? null,
    token_id: req.get("x-multitokens-token-id") ?? null,
    credential: req.get("x-multitokens-credential") ?? null,
    authorization: req.get("authorization") ?? null,
    cookie: req.get("cookie") ?? null,
  });
app.all("/api/admin/stats", answer("admin-stats"));
app.all("/api/billing", answer("billing"));
app.all(/^\/v1\/orders:cancel$/i, answer("orders-cancel"));
app.all("/users/@me/keys", answer("my-keys"));
app.delete("/api/items/:id", answer("delete-item"));
app.all("/api/items/:id", answer("item"));
app.all("/public/headers", answer("public-headers"));
app.all("*", answer("other"));
app.listen(Number(process.argv[2]), "127.0.0.1");
