// Validates every Istio WasmPlugin in a YAML file against Istio's CRD schema as the
// kubernetes-models project publishes it (@kubernetes-models/istio, from npm). Run with the
// working directory .tools/node (where make tools installs it), the script on standard input.
// Usage: node --input-type=module - <file.yaml>   Prints "valid <name>" per plugin; throws otherwise.
import fs from "node:fs";
import YAML from "yaml";
import { WasmPlugin } from "@kubernetes-models/istio/extensions.istio.io/v1alpha1";

let count = 0;
for (const doc of YAML.parseAllDocuments(fs.readFileSync(process.argv[2], "utf8"))) {
  const obj = doc.toJS();
  if (!obj || obj.kind !== "WasmPlugin" || obj.apiVersion !== "extensions.istio.io/v1alpha1") continue;
  new WasmPlugin(obj).validate();
  console.log("valid", obj.metadata.name);
  count += 1;
}
if (count === 0) throw new Error("no Istio WasmPlugin in " + process.argv[2]);
