// The search page: search as you type, endless scroll, a lightbox, search by an uploaded,
// dropped or pasted image, and filters. The query lives in the URL, so results can be linked.
// Everything from the server is put in the page as text (textContent), never as HTML.
"use strict";

const PAGE = 40;
const DEBOUNCE_MS = 250;

const $ = (id) => document.getElementById(id);
// Where the app is mounted (`clipsearch serve --url-prefix /photos`); "" at the site's root.
const ROOT = document.documentElement.dataset.root;

// The page's strings in its language (web/messages.py): whole sentences with {fields}.
const MESSAGES = JSON.parse($("messages").textContent);
const t = (key, fields = {}) => MESSAGES[key].replace(/\{(\w+)\}/g, (_, name) => String(fields[name]));
const form = $("search");
const box = $("q");
const grid = $("results");
const statusLine = $("status");
const lightbox = $("lightbox");

const state = { like: null, upload: null, query: null, offset: 0, more: false, loading: false, hits: [], request: null, shown: -1, opened: 0 };

// The fields loadFacets builds (their choices come from the collection), absent until it has.
const FACET_FIELD = /^(ext|tag|attr_.+)$/;
const FILTER_FIELD = /^(folder|date_from|date_to|ext|tag|attr_.+)$/;

// ---- the query, to and from the URL ------------------------------------------------------

function queryParams({ onLoad = false } = {}) {
  const params = new URLSearchParams();
  for (const [key, value] of new FormData(form)) {
    if (typeof value === "string" && value.trim() !== "") params.set(key, value.trim());
  }
  if (onLoad) {
    // A link's ext, tag and attribute filters: the first search must not wait for the facets.
    for (const [key, value] of new URLSearchParams(location.search)) {
      if (FACET_FIELD.test(key) && value.trim() !== "" && !params.has(key)) params.set(key, value.trim());
    }
  }
  if (state.like !== null) {
    params.delete("q");
    params.set("image_id", state.like);
  }
  return params;
}

function restoreFromUrl() {
  const params = new URLSearchParams(location.search);
  box.value = params.get("q") || "";
  state.like = params.get("image_id");
  state.upload = null;
  for (const field of form.elements) {
    if (!field.name || field === box) continue;
    if (field.type === "checkbox") field.checked = params.has(field.name);
    else field.value = params.get(field.name) || "";
  }
  if ([...params].some(([key, value]) => value && FILTER_FIELD.test(key))) {
    $("filters").open = true;
  }
}

function hasQuery() {
  return state.upload !== null || state.like !== null || box.value.trim() !== "";
}

// ---- searching -----------------------------------------------------------------------------

async function search({ append = false, push = false, onLoad = false } = {}) {
  if (!append) {
    state.offset = 0;
    state.hits = [];
    state.query = queryParams({ onLoad }); // the next pages are of this query, whatever the form says
    const url = state.upload || !hasQuery() ? location.pathname : `${location.pathname}?${state.query}`;
    history[push ? "pushState" : "replaceState"](null, "", url);
    setNotice(null);
  }
  if (!hasQuery()) {
    grid.replaceChildren();
    setStatus(t("idle"));
    return;
  }
  if (state.request) state.request.abort();
  const request = new AbortController();
  state.request = request;
  state.loading = true;
  document.body.setAttribute("aria-busy", "true");
  if (!append) setStatus(t("searching"));

  const params = new URLSearchParams(state.query);
  params.set("k", PAGE);
  params.set("offset", state.offset);
  let response;
  try {
    if (state.upload) {
      const body = new FormData();
      for (const [key, value] of params) if (key !== "q") body.set(key, value);
      body.set("image", state.upload);
      response = await fetch(`${ROOT}/api/search`, { method: "POST", body, signal: request.signal });
    } else {
      response = await fetch(`${ROOT}/api/search?${params}`, { signal: request.signal });
    }
    const data = await response.json();
    if (!response.ok) throw new Error(errorText(data, response.status));
    if (!append) grid.replaceChildren();
    show(data, append);
    if (!append) setNotice(data.notice);
  } catch (error) {
    if (error.name === "AbortError") return;
    if (!append) grid.replaceChildren();
    setStatus(error.message, true);
    state.more = false;
  } finally {
    if (state.request === request) {
      state.request = null;
      state.loading = false;
      document.body.removeAttribute("aria-busy");
    }
  }
}

function show(data, append) {
  const first = state.hits.length;
  state.hits.push(...data.results);
  data.results.forEach((hit, i) => grid.append(card(hit, first + i)));
  state.offset += data.count;
  state.more = data.count === data.k && state.offset + PAGE <= 10000;
  if (!append || data.count) {
    const fields = { count: `${state.hits.length}${state.more ? "+" : ""}`, ms: Math.round(data.took_ms) };
    const key = state.upload ? "results_upload" : state.like !== null ? "results_like" : "results";
    Object.assign(fields, { id: state.like, name: state.upload && (state.upload.name || t("pasted_image")) });
    setStatus(state.hits.length ? t(key, fields) : t("nothing"));
  }
}

// The server's error in the page's language: by its code, with its English message as {detail}.
function errorText(data, status) {
  if (!data.error) return t("server_answered", { status });
  const key = `error_${data.code}`;
  return key in MESSAGES ? t(key, { ...data.fields, detail: data.error }) : data.error;
}

// A word from the server beside the results (a query in a script the model cannot read).
function setNotice(notice) {
  const line = $("notice");
  const key = notice && `notice_${notice.code}`;
  line.textContent = notice ? (key in MESSAGES ? t(key) : notice.message) : "";
  line.hidden = !notice;
}

function setStatus(text, error = false) {
  statusLine.replaceChildren();
  const span = document.createElement("span");
  span.textContent = text;
  if (error) {
    span.className = "error";
    span.setAttribute("role", "alert");
  }
  statusLine.append(span);
}

// ---- results -------------------------------------------------------------------------------

function title(hit) {
  const attributes = hit.attributes || {};
  return String(attributes.title || attributes.name || hit.path);
}

function safeLink(value) {
  try {
    const url = new URL(String(value), location.href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

function card(hit, index) {
  const item = document.createElement("li");
  const open = document.createElement("a");
  open.href = hit.url;
  open.dataset.index = index;
  open.addEventListener("click", (event) => {
    event.preventDefault();
    openLightbox(index);
  });
  const image = document.createElement("img");
  image.src = hit.thumbnail_url;
  image.alt = title(hit);
  image.loading = "lazy";
  image.width = 256;
  image.height = 256;
  open.append(image);
  item.append(open);

  const attributes = hit.attributes || {};
  if (attributes.title || attributes.price !== undefined) {
    const product = document.createElement("div");
    product.className = "product";
    const name = document.createElement("strong");
    name.textContent = String(attributes.title || attributes.sku || hit.path);
    product.append(name);
    if (attributes.price !== undefined && attributes.price !== "") {
      const price = document.createElement("span");
      price.className = "price";
      const number = Number(attributes.price);
      price.textContent = Number.isFinite(number) ? number.toFixed(2) : String(attributes.price);
      product.append(price);
    }
    const link = safeLink(attributes.url);
    if (link) {
      const view = document.createElement("a");
      view.href = link;
      view.rel = "noopener noreferrer";
      view.target = "_blank";
      view.textContent = t("view_product");
      product.append(view);
    }
    item.append(product);
  }
  const footer = document.createElement("div");
  footer.className = "card-footer";
  const score = document.createElement("span");
  score.className = "score";
  score.title = t("cosine");
  score.textContent = hit.score.toFixed(3);
  const similar = document.createElement("a");
  similar.className = "similar";
  similar.href = `${ROOT}/?image_id=${hit.id}`;
  similar.textContent = t("more_like_this");
  similar.addEventListener("click", (event) => {
    event.preventDefault();
    moreLike(hit.id);
  });
  footer.append(score, similar);
  item.append(tagList(hit), footer);
  return item;
}

function tagList(hit) {
  const list = document.createElement("div");
  list.className = "tags";
  for (const tag of hit.tags || []) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "tag";
    button.textContent = tag.name;
    button.title = t("tag_score", { score: tag.score.toFixed(2) });
    button.addEventListener("click", () => browseTag(tag.name));
    list.append(button);
  }
  return list;
}

// Narrow the results to the tag; with no query yet, the tag's own words rank its images.
function browseTag(name) {
  if (lightbox.open) lightbox.close();
  const select = form.elements.tag;
  if (![...select.options].some((option) => option.value === name)) select.append(new Option(name, name));
  select.value = name;
  if (!hasQuery()) box.value = name;
  $("filters").open = true;
  search({ push: true });
}

function moreLike(id) {
  if (lightbox.open) lightbox.close();
  state.like = String(id);
  state.upload = null;
  box.value = "";
  search({ push: true });
  window.scrollTo(0, 0);
}

// ---- the lightbox --------------------------------------------------------------------------

async function openLightbox(index) {
  const hit = state.hits[index];
  if (!hit) return;
  state.shown = index;
  const opened = ++state.opened;
  const image = $("lightbox-image");
  image.src = hit.url;
  image.alt = title(hit);
  $("lightbox-title").textContent = title(hit);
  $("lightbox-open").href = hit.url;
  $("lightbox-prev").disabled = index === 0;
  $("lightbox-next").disabled = index >= state.hits.length - 1;
  const meta = $("lightbox-meta");
  meta.replaceChildren();
  if (!lightbox.open) lightbox.showModal();
  const rows = [[t("score"), hit.score.toFixed(4)], [t("path"), hit.path], [t("size"), `${hit.width} × ${hit.height}`]];
  try {
    const response = await fetch(`${ROOT}/api/images/${hit.id}`);
    if (response.ok) {
      const details = await response.json();
      rows.push(["taken", details.taken_at.slice(0, 16).replace("T", " ")], ["bytes", details.size.toLocaleString()]);
    }
  } catch {
    // the metadata is a bonus; the image and the search result are shown regardless
  }
  // The reader may have gone on to the next image, or closed this one, while it came.
  if (opened !== state.opened || !lightbox.open) return;
  if (hit.tags && hit.tags.length) rows.push([t("tag"), hit.tags.map((tag) => tag.name).join(", ")]);
  for (const [key, value] of Object.entries(hit.attributes || {})) rows.push([key, value]);
  for (const [key, value] of rows) {
    const term = document.createElement("dt");
    term.textContent = key;
    const detail = document.createElement("dd");
    detail.textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
    meta.append(term, detail);
  }
}

function step(delta) {
  const next = state.shown + delta;
  if (next >= 0 && next < state.hits.length) openLightbox(next);
  if (next >= state.hits.length - 3 && state.more && !state.loading) search({ append: true });
}

// ---- search by image -----------------------------------------------------------------------

function searchByImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    setStatus(t("not_an_image"), true);
    return;
  }
  state.upload = file;
  state.like = null;
  box.value = "";
  search({ push: true });
}

// ---- filters -------------------------------------------------------------------------------

async function loadFacets() {
  let facets;
  try {
    const response = await fetch(`${ROOT}/api/facets`);
    if (!response.ok) return;
    facets = await response.json();
  } catch {
    return;
  }
  const folders = $("folders");
  for (const folder of facets.folders) {
    const option = document.createElement("option");
    option.value = folder;
    folders.append(option);
  }
  const ext = form.elements.ext;
  for (const value of facets.extensions) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = value;
    ext.append(option);
  }
  const params = new URLSearchParams(location.search);
  ext.value = params.get("ext") || "";
  const tag = form.elements.tag;
  for (const { name, count } of facets.tags) tag.append(new Option(`${name} (${count})`, name));
  const wanted = params.get("tag") || "";
  if (wanted && ![...tag.options].some((option) => option.value === wanted)) tag.append(new Option(wanted, wanted));
  tag.value = wanted;
  const holder = $("attributes");
  for (const [name, facet] of Object.entries(facets.attributes)) {
    if (facet.values) {
      const select = document.createElement("select");
      select.name = `attr_${name}`;
      select.setAttribute("form", "search");
      select.append(new Option(t("any"), ""));
      for (const value of facet.values) select.append(new Option(value, value));
      select.value = params.get(select.name) || "";
      holder.append(labelled(name, select));
    } else {
      for (const bound of ["min", "max"]) {
        const input = document.createElement("input");
        input.type = "number";
        input.step = "any";
        input.name = `attr_${name}_${bound}`;
        input.placeholder = String(facet[bound]);
        input.setAttribute("form", "search");
        input.value = params.get(input.name) || "";
        holder.append(labelled(t(`attribute_${bound}`, { name }), input));
      }
    }
  }
}

function labelled(text, field) {
  const label = document.createElement("label");
  label.append(`${text} `, field);
  return label;
}

// ---- wiring --------------------------------------------------------------------------------

let typing;
box.addEventListener("input", () => {
  clearTimeout(typing);
  state.like = null;
  state.upload = null;
  typing = setTimeout(() => search(), DEBOUNCE_MS);
});
form.addEventListener("submit", (event) => {
  event.preventDefault();
  clearTimeout(typing);
  search({ push: true });
});
document.addEventListener("change", (event) => {
  // The filters sit outside the form (form="search") and change events do not reach it.
  const own = [box, $("upload"), $("language")].includes(event.target);
  if (event.target.form === form && !own) search({ push: true });
});
$("language").addEventListener("change", (event) => {
  // Remembered for a year; the server renders the page in it from then on.
  document.cookie = `lang=${event.target.value}; path=/; max-age=31536000; samesite=lax`;
  location.reload();
});
$("upload").addEventListener("change", (event) => searchByImage(event.target.files[0]));
window.addEventListener("popstate", () => {
  restoreFromUrl();
  search();
});

const drop = $("drop");
document.addEventListener("dragover", (event) => {
  if ([...event.dataTransfer.types].includes("Files")) {
    event.preventDefault();
    drop.hidden = false;
  }
});
drop.addEventListener("dragleave", () => { drop.hidden = true; });
document.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.hidden = true;
  searchByImage(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
  if (file) {
    event.preventDefault();
    searchByImage(file);
  }
});

document.addEventListener("keydown", (event) => {
  if (lightbox.open) {
    if (event.key === "ArrowRight") step(1);
    if (event.key === "ArrowLeft") step(-1);
    return;
  }
  const typingInField = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
  if (event.key === "/" && !typingInField) {
    event.preventDefault();
    box.focus();
    box.select();
  }
});
$("lightbox-prev").addEventListener("click", () => step(-1));
$("lightbox-next").addEventListener("click", () => step(1));
$("lightbox-like").addEventListener("click", () => moreLike(state.hits[state.shown].id));
lightbox.addEventListener("click", (event) => {
  if (event.target === lightbox) lightbox.close(); // a click on the backdrop
});

new IntersectionObserver((entries) => {
  if (entries.some((entry) => entry.isIntersecting) && state.more && !state.loading) {
    search({ append: true });
  }
}, { rootMargin: "600px" }).observe($("more"));

restoreFromUrl();
loadFacets();
if (hasQuery()) search({ onLoad: true });
