// The map page of the inference service: the results of the area in view (GET /results?bbox=),
// one at a time on a date slider, its land cover (tiles in the model's class colours) over the
// scene's true colour (tiles of the scene's own bands: there is no internet basemap), with the
// legend, class statistics, model version, confidence and links to its COG and STAC item.
import * as maplibregl from "../maplibre/maplibre-gl.mjs";

const base = new URL(".", document.baseURI);
const api = (path) => new URL(path, base).href;
const TMS = "WebMercatorQuad";
const LIMIT = 500; // results one search asks for (the newest first)
const $ = (id) => document.getElementById(id);

// served: "name/version" of the model inference serves, whose result is a scene's map
const state = { results: [], selected: null, legendFor: null, served: null };

const map = new maplibregl.Map({
  container: "map",
  style: {
    version: 8,
    sources: {},
    layers: [{ id: "background", type: "background", paint: { "background-color": "#2b3038" } }],
  },
  center: [0, 20],
  zoom: 1,
  attributionControl: false,
  maxZoom: 18,
});
map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-left");
map.addControl(new maplibregl.ScaleControl(), "bottom-left");
map.addControl(
  new maplibregl.AttributionControl({
    compact: true,
    customAttribution: "Contains modified Copernicus Sentinel data",
  }),
);
// A tile that fails (a scene whose bands went missing) is told on the page, not thrown.
map.on("error", (event) => {
  $("found").textContent = `a map layer failed: ${event.error?.message ?? "unknown error"}`;
});

async function getJSON(path) {
  const response = await fetch(api(path), { headers: { Accept: "application/json" } });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.description ?? `${response.status} ${response.statusText}`);
  }
  return response.json();
}

const query = (params) => new URLSearchParams(params).toString();
const version = (r) => query({ model_version: r.model_version, model_name: r.model_name });
const day = (r) => (r.datetime ?? "").slice(0, 10) || "no date";
const pct = (x) => (x == null ? "–" : `${(100 * x).toFixed(1)} %`);

function tileSource(path, r) {
  return {
    type: "raster",
    // by hand: URL() would escape the template's braces
    tiles: [`${base.href}${path}/tiles/${TMS}/{z}/{x}/{y}.png?${version(r)}`],
    tileSize: 256,
    bounds: r.bbox,
    maxzoom: 18,
  };
}

function removeLayers() {
  for (const id of ["landcover", "truecolour"]) {
    if (map.getLayer(id)) map.removeLayer(id);
    if (map.getSource(id)) map.removeSource(id);
  }
}

function showLayers(r) {
  removeLayers();
  if (!r.bbox) return;
  // "loaded" once MapLibre has every tile of both layers drawn (the browser test waits on it)
  document.body.dataset.tiles = "loading";
  map.once("idle", () => {
    document.body.dataset.tiles = "loaded";
  });
  const scene = encodeURIComponent(r.scene_id);
  map.addSource("truecolour", tileSource(`tiles/scenes/${scene}`, r));
  map.addLayer({ id: "truecolour", type: "raster", source: "truecolour" });
  map.addSource("landcover", tileSource(`tiles/results/${scene}`, r));
  map.addLayer({
    id: "landcover",
    type: "raster",
    source: "landcover",
    paint: { "raster-opacity": Number($("opacity").value) / 100, "raster-resampling": "nearest" },
  });
}

function fact(dl, name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dl.append(dt, dd);
}

function link(text, href) {
  const a = document.createElement("a");
  a.textContent = text;
  a.href = href;
  return a;
}

function showLegend(classes) {
  const ul = $("legend");
  ul.replaceChildren();
  for (const c of classes) {
    const li = document.createElement("li");
    li.dataset.value = c.value;
    li.dataset.name = c.name;
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `#${c.color_hint ?? "000000"}`;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.title ?? c.name; // the class as its user named it
    li.append(swatch, name);
    ul.append(li);
  }
}

function showStatistics(stats) {
  const body = $("stats").tBodies[0];
  body.replaceChildren();
  const rows = Object.entries(stats.classes ?? {}).sort((a, b) => b[1].share - a[1].share);
  if (stats.uncertain) rows.push(["uncertain", stats.uncertain]);
  for (const [name, v] of rows) {
    const tr = document.createElement("tr");
    for (const text of [name, v.area_km2.toFixed(3), pct(v.share)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    body.append(tr);
  }
}

async function select(index, { fit = false } = {}) {
  const r = state.results[index];
  if (!r) return;
  const same = state.selected?.id === r.id && map.getLayer("landcover");
  state.selected = r;
  $("date").value = String(index);
  $("date-label").textContent = day(r);
  for (const [i, li] of [...$("results").children].entries()) {
    li.classList.toggle("selected", i === index);
  }
  if (!same) showLayers(r); // a pan or zoom keeps the layers of the result shown
  // picked in the list: show where it is (far results are a pixel at the first view's zoom)
  // (a bbox across the antimeridian, west > east, would zoom out to the world: left as it is)
  if (fit && r.bbox && r.bbox[0] <= r.bbox[2]) {
    map.fitBounds([[r.bbox[0], r.bbox[1]], [r.bbox[2], r.bbox[3]]], { padding: 20 });
  }
  $("result").hidden = false;
  $("result-title").textContent = r.scene_id;
  const facts = $("result-facts");
  facts.replaceChildren();
  fact(facts, "date", r.datetime ?? "–");
  fact(facts, "model", `${r.model_name} v${r.model_version}`);
  fact(facts, "confidence", pct(r.mean_confidence));
  fact(facts, "uncertain", pct(r.uncertain_share));
  $("result-links").replaceChildren(
    link("COG", r.links.cog), " · ", link("STAC item", r.links.item), " · ",
    link("statistics", r.links.statistics),
  );
  const scene = encodeURIComponent(r.scene_id);
  try {
    const [item, stats] = await Promise.all([
      getJSON(`results/${scene}/item?${version(r)}`),
      getJSON(`results/${scene}/statistics?${version(r)}`),
    ]);
    if (state.selected !== r) return;
    showLegend(item.assets?.classification?.["classification:classes"] ?? []);
    showStatistics(stats);
  } catch (error) {
    $("found").textContent = `could not read the result: ${error.message}`;
  }
}

const served = (r) => (state.served === `${r.model_name}/${r.model_version}` ? 1 : 0);

function showResults(results, total) {
  // oldest first: the slider runs through time; of one date's results the served model's comes
  // last, so the newest date opens on the scene's map (GET /results/{scene}), not on a what-if
  state.results = results.sort(
    (a, b) => (a.datetime ?? "").localeCompare(b.datetime ?? "") || served(a) - served(b),
  );
  const scenes = new Set(results.map((r) => r.scene_id));
  // a page is the newest LIMIT results: say so when the view holds more
  const shown = total > results.length ? `${results.length} of ${total}` : `${results.length}`;
  $("found").textContent =
    `${shown} result${total === 1 ? "" : "s"} of ${scenes.size} ` +
    `scene${scenes.size === 1 ? "" : "s"} in view` +
    (total > results.length ? " (the newest; zoom in for the others)" : "");
  const ol = $("results");
  ol.replaceChildren();
  results.forEach((r, i) => {
    const li = document.createElement("li");
    li.textContent = `${day(r)} · ${r.scene_id} · v${r.model_version}`;
    li.addEventListener("click", () => select(i, { fit: true }));
    ol.append(li);
  });
  const slider = $("date");
  slider.max = String(Math.max(0, results.length - 1));
  slider.disabled = results.length < 2;
  const keep = results.findIndex((r) => r.id === state.selected?.id);
  if (results.length) select(keep >= 0 ? keep : results.length - 1);
  else {
    removeLayers();
    $("result").hidden = true;
    $("date-label").textContent = "";
  }
}

async function readServed() {
  try {
    const models = await getJSON("models?limit=1"); // the deployed one; history: one row
    const d = models.deployed;
    state.served = d ? `${d.name}/${d.version}` : null;
  } catch {
    state.served = null; // no model yet, or the API is older: the newest result is shown
  }
}

async function searchView() {
  await readServed();
  const b = map.getBounds();
  const bbox = [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()]
    .map((v, i) => Math.max(i % 2 ? -90 : -180, Math.min(i % 2 ? 90 : 180, v)).toFixed(6))
    .join(",");
  try {
    const page = await getJSON(`results?${query({ bbox, limit: LIMIT })}`);
    showResults(page.results, page.total ?? page.results.length);
  } catch (error) {
    $("found").textContent = `search failed: ${error.message}`;
  }
}

async function start() {
  // first view: every result there is (the newest 500), then searches follow the map
  let page;
  await readServed();
  try {
    page = await getJSON(`results?${query({ limit: LIMIT })}`);
  } catch (error) {
    $("found").textContent = `search failed: ${error.message}`;
    return;
  }
  const boxes = page.results.map((r) => r.bbox).filter(Boolean);
  if (boxes.length) {
    const bounds = boxes.reduce(
      (acc, b) => [Math.min(acc[0], b[0]), Math.min(acc[1], b[1]), Math.max(acc[2], b[2]),
        Math.max(acc[3], b[3])],
      [180, 90, -180, -90],
    );
    map.fitBounds([[bounds[0], bounds[1]], [bounds[2], bounds[3]]], { padding: 20, duration: 0 });
  } else {
    $("found").textContent = "no results yet: classify a scene and reload";
  }
  map.on("moveend", searchView);
  await searchView();
  document.body.dataset.ready = "true";
}

$("date").addEventListener("input", (event) => select(Number(event.target.value)));
$("opacity").addEventListener("input", (event) => {
  if (map.getLayer("landcover")) {
    map.setPaintProperty("landcover", "raster-opacity", Number(event.target.value) / 100);
  }
});
map.on("load", start);
