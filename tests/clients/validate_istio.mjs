// Validates every Istio resource in a YAML file (WasmPlugin, AuthorizationPolicy,
// PeerAuthentication) against Istio's CRD schemas as the kubernetes-models project publishes them
// (@kubernetes-models/istio, from npm). Run with the working directory .tools/node (where make
// tools installs it), the script on standard input.
// Usage: node --input-type=module - <file.yaml>   Prints "valid <kind> <name>" per resource; throws otherwise.
import fs from "node:fs";
import YAML from "yaml";
import { WasmPlugin } from "@kubernetes-models/istio/extensions.istio.io/v1alpha1";
import { AuthorizationPolicy, PeerAuthentication } from "@kubernetes-models/istio/security.istio.io/v1";

const kinds = {
  "extensions.istio.io/v1alpha1/WasmPlugin": WasmPlugin,
  "security.istio.io/v1/AuthorizationPolicy": AuthorizationPolicy,
  "security.istio.io/v1/PeerAuthentication": PeerAuthentication,
};

let count = 0;
for (const doc of YAML.parseAllDocuments(fs.readFileSync(process.argv[2], "utf8"))) {
  const obj = doc.toJS();
  const kind = obj && kinds[obj.apiVersion + "/" + obj.kind];
  if (!kind) throw new Error("not a known Istio resource: " + (obj && obj.apiVersion + " " + obj.kind));
  new kind(obj).validate();
  console.log("valid", obj.kind, obj.metadata.name);
  count += 1;
}
if (count === 0) throw new Error("no Istio resource in " + process.argv[2]);
