// FreeFuse Mask Preview: a legend of subject names and colours under the preview image.
// Names are inserted as text (textContent), never as HTML.
import { app } from "../../../scripts/app.js";

const NODE = "FreeFuseMaskPreview";

function legendElement(entries) {
  const box = document.createElement("div");
  box.style.cssText = "display:flex;flex-wrap:wrap;gap:8px;padding:4px;font:12px sans-serif;color:#ddd";
  for (const entry of entries) {
    const item = document.createElement("span");
    const swatch = document.createElement("span");
    swatch.style.cssText = "display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle";
    swatch.style.background = /^#[0-9a-f]{6}$/i.test(entry.color) ? entry.color : "#888";
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(String(entry.name) + (entry.empty ? " (no region)" : "")));
    box.appendChild(item);
  }
  return box;
}

app.registerExtension({
  name: "freefuse.maskLegend",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      const entries = output?.freefuse_legend ?? [];
      const element = legendElement(entries);
      if (this.freefuseLegend) {
        this.freefuseLegend.element.replaceWith(element);
        this.freefuseLegend.element = element;
      } else {
        this.freefuseLegend = this.addDOMWidget("freefuse_legend", "freefuse_legend", element, { serialize: false });
      }
    };
  },
  async setup() {
    window.__freefuse_extensions = [...(window.__freefuse_extensions ?? []), "freefuse.maskLegend"];
  },
});
