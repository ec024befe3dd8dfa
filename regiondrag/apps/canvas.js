// The drag canvas: select regions on the photo, grab them and move / rotate / scale them, and see the
// copy-paste preview as the mouse moves. Run by gradio's gr.HTML (js_on_load) with `element`, `props`,
// `trigger` and `watch`; see regiondrag/apps/canvas.py for the protocol with the server.
//
// Geometry is in photo pixels (x right, y down). A region is its handle, an outline (integer vertices, the
// polygon the server rasterises) or a brushed mask (run lengths, as the server gets it), and a transform
// about the centre c of the handle's box:
//   M = T(c + t) R(angle) S(sx, sy) T(-c) P    (handle point -> target point)
// where P, a homography, is the identity until a corner is dragged on its own (perspective, Ctrl or Alt
// held): then P takes the box's corners to the dragged corners carried back through the affine part.
// The preview warps exactly as the library's pixel copy-paste preview (RegionDragPipeline.preview of a
// transform pair): each target pixel p takes the photo's pixel floor(M^-1 p + 1e-6) when that one lies in
// the handle; regions are pasted in order, all reading the original photo. The server's mapping decides
// the edit; this warp is only the preview.
const CELL_SNAP = 1e-6;  // regiondrag.mapping.CELL_SNAP
const HANDLE = "rgb(235,45,45)", TARGET = "rgb(40,110,255)", GRIP = 7, ROTATE_OFFSET = 28, MIN_MOVE = 2;
const BRUSH_STEP = 2;  // [ and ] change the brush radius by this (photo pixels); the slider spans its range

const canvas = element.querySelector("canvas.rd-view");
const ctx = canvas.getContext("2d");
const info = element.querySelector(".rd-info");
const resultImg = element.querySelector("img.rd-result");
const liveBox = element.querySelector(".rd-live input"), why = element.querySelector(".rd-why");
const brushSize = element.querySelector(".rd-size input");
const tab = Math.random().toString(36).slice(2);  // this tab's id: its requests are compared by seq
let photo = null, original = null, preview = null, handleMasks = [];  // ImageData / canvases at photo size
let regions = [], selected = -1, tool = "lasso", seq = 0, shown = 0, replies = 0;
let undo = [], redo = [], gesture = null, draft = null, request = "", pointer = null;
// live mode: the user's choice (null: none yet, the server's advice decides), that advice, a frame asked for
let liveChosen = null, liveAdvice = {live: false, why: ""}, frameAsked = false;

// -- geometry -------------------------------------------------------------------------------------
function box(outline) {
  const xs = outline.map(p => p[0]), ys = outline.map(p => p[1]);
  return [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)];
}
function maskBox(mask) {  // of the mask's pixels, as box() of an outline's vertices
  const W = photo.width, b = [Infinity, Infinity, -Infinity, -Infinity];
  mask.forEach((v, i) => { if (v) { const x = i % W, y = (i - x) / W;
    b[0] = Math.min(b[0], x); b[1] = Math.min(b[1], y); b[2] = Math.max(b[2], x); b[3] = Math.max(b[3], y); } });
  return b;
}
function centre(r) { const b = r.box; return [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]; }
function matrix(r) {  // 3x3 row-major, handle -> target
  return r.persp ? multiply(affine(r), r.persp) : affine(r);
}
function affine(r) {  // the move, turn and scale
  const [cx, cy] = centre(r), c = Math.cos(r.angle), s = Math.sin(r.angle);
  const a = c * r.sx, b = -s * r.sy, d = s * r.sx, e = c * r.sy;
  return [[a, b, cx + r.tx - a * cx - b * cy], [d, e, cy + r.ty - d * cx - e * cy], [0, 0, 1]];
}
function multiply(m, n) {
  return m.map(row => [0, 1, 2].map(j => row[0] * n[0][j] + row[1] * n[1][j] + row[2] * n[2][j]));
}
function apply(m, p) {
  const w = m[2][0] * p[0] + m[2][1] * p[1] + m[2][2];
  return [(m[0][0] * p[0] + m[0][1] * p[1] + m[0][2]) / w, (m[1][0] * p[0] + m[1][1] * p[1] + m[1][2]) / w];
}
function invert(m) {
  const [[a, b, c], [d, e, f], [g, h, i]] = m;
  const A = e * i - f * h, B = f * g - d * i, C = d * h - e * g, det = a * A + b * B + c * C;
  return [[A / det, (c * h - b * i) / det, (b * f - c * e) / det],
          [B / det, (a * i - c * g) / det, (c * d - a * f) / det],
          [C / det, (b * g - a * h) / det, (a * e - b * d) / det]];
}
function boxCorners(r) { const b = r.box; return [[b[0], b[1]], [b[2], b[1]], [b[2], b[3]], [b[0], b[3]]]; }
function corners(r) {  // the handle box's corners carried by the transform, then its rotation grip
  const m = matrix(r);
  return boxCorners(r).map(p => apply(m, p));
}
function homography(from, to) {  // the 3x3 matrix (last entry 1) taking 4 points to 4 points
  const rows = from.flatMap(([x, y], i) => [[x, y, 1, 0, 0, 0, -to[i][0] * x, -to[i][0] * y, to[i][0]],
                                            [0, 0, 0, x, y, 1, -to[i][1] * x, -to[i][1] * y, to[i][1]]]);
  for (let c = 0; c < 8; c++) {  // Gauss-Jordan elimination with partial pivoting on the 8x9 system
    const p = rows.reduce((best, row, i) => i >= c && Math.abs(row[c]) > Math.abs(rows[best][c]) ? i : best, c);
    [rows[c], rows[p]] = [rows[p], rows[c]];
    const pivot = rows[c].map(v => v / rows[c][c]);
    rows.forEach((row, i) => {
      if (i !== c) { const f = row[c]; row.forEach((v, k) => { row[k] = v - f * pivot[k]; }); }
    });
    rows[c] = pivot;
  }
  const h = rows.map(row => row[8]);
  return [h.slice(0, 3), h.slice(3, 6), [h[6], h[7], 1]];
}
function convex(quad) {  // turning the box's way at every corner: no fold, its horizon outside
  return quad.every((p, i) => { const q = quad[(i + 1) % 4], s = quad[(i + 2) % 4];
                                return (q[0] - p[0]) * (s[1] - q[1]) - (q[1] - p[1]) * (s[0] - q[0]) > 0; });
}
function rotationGrip(r) {
  const [p0, p1] = corners(r), m = [(p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2];
  const t = apply(matrix(r), centre(r)), n = Math.hypot(m[0] - t[0], m[1] - t[1]) || 1;
  return [m[0] + (m[0] - t[0]) / n * ROTATE_OFFSET / scale(), m[1] + (m[1] - t[1]) / n * ROTATE_OFFSET / scale()];
}

// -- the view: photo pixels <-> canvas pixels --------------------------------------------------------
function scale() { return canvas.width / (photo ? photo.width : 1); }
function toPhoto(ev) {
  const b = canvas.getBoundingClientRect();
  return [(ev.clientX - b.left) * photo.width / b.width, (ev.clientY - b.top) * photo.height / b.height];
}

// -- the live copy-paste preview ---------------------------------------------------------------------
function handleMask(r) {  // the handle as a 0/1 mask at photo size, as the server reads it
  return r.runs ? decode(r.runs) : rasterise(r.outline);
}
function rasterise(outline) {  // the server fills the same polygon
  const c = new OffscreenCanvas(photo.width, photo.height), g = c.getContext("2d");
  g.fillStyle = "#fff";
  g.beginPath();
  outline.forEach((p, i) => i ? g.lineTo(p[0] + 0.5, p[1] + 0.5) : g.moveTo(p[0] + 0.5, p[1] + 0.5));
  g.closePath();
  g.fill();
  g.strokeStyle = "#fff";  // cv2.fillPoly covers the outline's own pixels too
  g.lineWidth = 1;
  g.stroke();
  return painted(c);
}
function painted(c) {  // the pixels of a canvas at photo size painted at least half opaque
  const a = c.getContext("2d").getImageData(0, 0, photo.width, photo.height).data;
  const mask = new Uint8Array(photo.width * photo.height);
  for (let i = 0; i < mask.length; i++) mask[i] = a[4 * i + 3] >= 128;
  return mask;
}
function encode(mask) {  // run lengths, row by row: zeros, ones, zeros, ... (the page -> server format)
  const runs = [];
  let value = 0, n = 0;
  for (const v of mask) { if (v !== value) { runs.push(n); value = v; n = 0; } n++; }
  runs.push(n);
  return runs;
}
function decode(runs) {
  const mask = new Uint8Array(photo.width * photo.height);
  let i = 0;
  runs.forEach((n, k) => { if (k % 2) mask.fill(1, i, i + n); i += n; });
  return mask;
}
const edges = new WeakMap();  // a brushed mask -> the centres of its pixels on its border, to draw it
function edge(mask) {
  if (!edges.has(mask)) {
    const W = photo.width, H = photo.height, out = [];
    const on = (x, y) => x >= 0 && y >= 0 && x < W && y < H && mask[y * W + x];
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
      if (on(x, y) && !(on(x - 1, y) && on(x + 1, y) && on(x, y - 1) && on(x, y + 1))) out.push([x + 0.5, y + 0.5]);
    }
    edges.set(mask, out);
  }
  return edges.get(mask);
}
function warp() {
  const W = photo.width, H = photo.height, src = original.data, out = new Uint8ClampedArray(src);
  regions.forEach((r, k) => {
    const m = matrix(r), inv = invert(m), mask = handleMasks[k];
    const pts = corners(r);  // the target lies in the transformed box
    const x0 = Math.max(0, Math.floor(Math.min(...pts.map(p => p[0]))) - 1);
    const x1 = Math.min(W - 1, Math.ceil(Math.max(...pts.map(p => p[0]))) + 1);
    const y0 = Math.max(0, Math.floor(Math.min(...pts.map(p => p[1]))) - 1);
    const y1 = Math.min(H - 1, Math.ceil(Math.max(...pts.map(p => p[1]))) + 1);
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        const w = inv[2][0] * x + inv[2][1] * y + inv[2][2];
        const hx = Math.floor((inv[0][0] * x + inv[0][1] * y + inv[0][2]) / w + CELL_SNAP);
        const hy = Math.floor((inv[1][0] * x + inv[1][1] * y + inv[1][2]) / w + CELL_SNAP);
        if (hx < 0 || hy < 0 || hx >= W || hy >= H || !mask[hy * W + hx]) continue;
        const s = 4 * (hy * W + hx), d = 4 * (y * W + x);
        out[d] = src[s]; out[d + 1] = src[s + 1]; out[d + 2] = src[s + 2];
      }
    }
  });
  preview = new ImageData(out, W, H);
}

// -- drawing -------------------------------------------------------------------------------------------
const previewCanvas = new OffscreenCanvas(1, 1);
function draw() {
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!photo) return;
  const k = scale();
  previewCanvas.width = photo.width; previewCanvas.height = photo.height;
  previewCanvas.getContext("2d").putImageData(preview, 0, 0);
  ctx.drawImage(previewCanvas, 0, 0, canvas.width, canvas.height);
  const path = (pts, colour, dash) => {
    ctx.setLineDash(dash ? [6, 4] : []);
    ctx.strokeStyle = colour; ctx.lineWidth = 2;
    ctx.beginPath();
    pts.forEach((p, i) => i ? ctx.lineTo(p[0] * k, p[1] * k) : ctx.moveTo(p[0] * k, p[1] * k));
    ctx.closePath(); ctx.stroke(); ctx.setLineDash([]);
  };
  const dots = (pts, colour) => {
    ctx.fillStyle = colour;
    pts.forEach(p => ctx.fillRect(p[0] * k - 1, p[1] * k - 1, 2, 2));
  };
  regions.forEach((r, i) => {
    const m = matrix(r);
    if (r.outline) {
      path(r.outline, HANDLE, true);
      path(r.outline.map(p => apply(m, p)), TARGET, false);
    } else {  // brushed: its border pixels, and where the transform puts them
      dots(edge(handleMasks[i]), HANDLE);
      dots(edge(handleMasks[i]).map(p => apply(m, p)), TARGET);
    }
    const a = centre(r), b = apply(m, a);
    arrow(a[0] * k, a[1] * k, b[0] * k, b[1] * k);
    if (i === selected) {
      ctx.fillStyle = "#fff"; ctx.strokeStyle = TARGET;
      corners(r).forEach(p => { ctx.fillRect(p[0] * k - GRIP / 2, p[1] * k - GRIP / 2, GRIP, GRIP);
                                ctx.strokeRect(p[0] * k - GRIP / 2, p[1] * k - GRIP / 2, GRIP, GRIP); });
      const g = rotationGrip(r);
      ctx.beginPath(); ctx.arc(g[0] * k, g[1] * k, GRIP / 2 + 1, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
    }
  });
  if (draft && draft.brush) {
    ctx.globalAlpha = 0.5; ctx.drawImage(draft.brush, 0, 0, canvas.width, canvas.height); ctx.globalAlpha = 1;
  } else if (draft && draft.points.length) path(draft.points, HANDLE, false);
  if (tool === "brush" && pointer && !gesture) {  // the brush's reach
    ctx.strokeStyle = HANDLE; ctx.lineWidth = 1;
    ctx.beginPath(); ctx.arc(pointer[0] * k, pointer[1] * k, brushSize.value * k, 0, 2 * Math.PI); ctx.stroke();
  }
}
function arrow(x0, y0, x1, y1) {
  const n = Math.hypot(x1 - x0, y1 - y0);
  if (n < 2) return;
  const ux = (x1 - x0) / n, uy = (y1 - y0) / n, h = Math.min(10, n / 2);
  ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
  ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1);
  ctx.lineTo(x1 - h * (ux - uy / 2), y1 - h * (uy + ux / 2)); ctx.moveTo(x1, y1);
  ctx.lineTo(x1 - h * (ux + uy / 2), y1 - h * (uy - ux / 2)); ctx.stroke();
}
function refresh() { warp(); draw(); }

// -- state: undo / redo, and what the server sees -----------------------------------------------------
function snapshot() { return JSON.stringify(regions); }
function restore(s) { regions = JSON.parse(s); handleMasks = regions.map(handleMask); selected = -1; }
function commit(before) {  // one finished action: undoable, and sent to the server (latest wins there)
  if (before !== undefined) { undo.push(before); redo = []; }
  send(false);
  info.textContent = regions.length ? `${regions.length} region(s); editing...` : "Select a region to drag.";
}
function send(moving) {  // the regions as they are now, as request `seq` (release: a finished action; input: live)
  seq += 1;
  request = JSON.stringify({tab, seq, live: liveBox.checked, moving,
                            regions: regions.map(r => ({...(r.runs ? {mask: r.runs} : {outline: r.outline}),
                                                        matrix: matrix(r)}))});
  props.value = request;
  trigger(moving ? "input" : "release");
}
function liveFrame() {  // live mode: one request per animation frame while a region is being dragged
  if (!liveBox.checked || frameAsked) return;
  frameAsked = true;
  requestAnimationFrame(() => { frameAsked = false; if (gesture) send(true); });
}
function advise(msg) {  // the server's advice: live mode on by default only where its re-edits are fast
  liveAdvice = msg;
  liveBox.checked = liveChosen ?? msg.live;
  const by = liveChosen === null ? "by default" : "(your choice)";
  why.textContent = `${liveBox.checked ? "on" : "off"} ${by}: ${msg.why}`;
}
liveBox.addEventListener("change", () => { liveChosen = liveBox.checked; advise(liveAdvice); });

// -- the mouse -------------------------------------------------------------------------------------------
function grab(p, perspective) {  // what the pointer at p grabs on the selected region (or any region's target)
  const tol = (GRIP + 3) / scale();
  if (selected >= 0) {
    const r = regions[selected], g = rotationGrip(r);
    if (Math.hypot(p[0] - g[0], p[1] - g[1]) <= tol) return {kind: "rotate", index: selected};
    const c = corners(r).findIndex(q => Math.hypot(p[0] - q[0], p[1] - q[1]) <= tol);
    if (c >= 0) return {kind: perspective ? "corner" : "scale", index: selected, corner: c};
  }
  for (let i = regions.length - 1; i >= 0; i--) {  // in a target: carried back onto its handle, as the warp does
    const [x, y] = apply(invert(matrix(regions[i])), p).map(Math.floor);
    if (x >= 0 && y >= 0 && x < photo.width && y < photo.height && handleMasks[i][y * photo.width + x]) {
      return {kind: "move", index: i};
    }
  }
  return null;
}
canvas.addEventListener("pointerdown", ev => {
  if (!photo || ev.button !== 0) return;
  try { canvas.setPointerCapture(ev.pointerId); } catch (e) { /* a scripted event has no pointer to capture */ }
  const p = toPhoto(ev), hit = tool === "polygon" && draft ? null : grab(p, ev.ctrlKey || ev.altKey);
  if (hit) {
    selected = hit.index;
    const r = regions[hit.index];
    gesture = {...hit, start: p, before: snapshot(), r0: {...r}, c: apply(matrix(r), centre(r))};
  } else if (tool === "polygon") {
    draft = draft || {points: []};
    const first = draft.points[0];
    if (draft.points.length >= 3 && Math.hypot(p[0] - first[0], p[1] - first[1]) * scale() <= GRIP + 3) finish();
    else draft.points.push(p.map(Math.round));
  } else if (tool === "brush") {
    selected = -1;
    draft = {brush: new OffscreenCanvas(photo.width, photo.height), last: p};
    paint(p);
  } else {
    selected = -1;
    draft = {points: [p.map(Math.round)], start: p};
  }
  draw();
});
function paint(p) {  // the brush from where it was to p: a round-capped stroke as wide as the brush
  const g = draft.brush.getContext("2d");
  g.strokeStyle = HANDLE; g.lineWidth = 2 * brushSize.value; g.lineCap = g.lineJoin = "round";
  g.beginPath(); g.moveTo(...draft.last); g.lineTo(p[0] + 1e-3, p[1]); g.stroke();  // (a dot on its own too)
  draft.last = p;
}
canvas.addEventListener("pointermove", ev => {
  if (!photo) return;
  const p = toPhoto(ev);
  pointer = p;
  if (gesture) { transform(gesture, p, ev.shiftKey); refresh(); liveFrame(); return; }
  if (draft && draft.brush && ev.buttons) paint(p);
  if (!draft || draft.brush || tool === "polygon" || !ev.buttons) { if (tool === "brush") draw(); return; }
  const s = draft.start, x0 = Math.round(Math.min(s[0], p[0])), x1 = Math.round(Math.max(s[0], p[0]));
  const y0 = Math.round(Math.min(s[1], p[1])), y1 = Math.round(Math.max(s[1], p[1]));
  if (tool === "lasso") {
    const last = draft.points[draft.points.length - 1];
    if (Math.hypot(p[0] - last[0], p[1] - last[1]) >= MIN_MOVE) draft.points.push(p.map(Math.round));
  } else if (tool === "rectangle") {
    draft.points = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]];
  } else if (tool === "ellipse") {
    draft.points = Array.from({length: 48}, (_, i) => [Math.round((x0 + x1) / 2 + (x1 - x0) / 2 * Math.cos(i * Math.PI / 24)),
                                                        Math.round((y0 + y1) / 2 + (y1 - y0) / 2 * Math.sin(i * Math.PI / 24))]);
  }
  draw();
});
canvas.addEventListener("pointerup", () => {
  if (gesture) {
    const g = gesture;
    gesture = null;
    if (JSON.stringify(regions[g.index]) !== JSON.stringify(g.r0)) commit(g.before);
    draw();
  } else if (draft && tool !== "polygon") finish();
});
canvas.addEventListener("dblclick", () => { if (draft && tool === "polygon") finish(); });
function finish() {  // close the region being selected
  let handle = {outline: [], box: [0, 0, 0, 0]};
  if (draft.brush) {
    const mask = painted(draft.brush);
    handle = {runs: encode(mask), box: maskBox(mask)};
  } else {
    const pts = draft.points.filter((p, i, a) => !i || p[0] !== a[i - 1][0] || p[1] !== a[i - 1][1]);
    if (pts.length >= 3) handle = {outline: pts, box: box(pts)};
  }
  draft = null;
  const b = handle.box;
  if (!(b[2] - b[0] >= 4 && b[3] - b[1] >= 4)) { draw(); return; }  // a click, not a region
  const before = snapshot();
  regions.push({...handle, tx: 0, ty: 0, angle: 0, sx: 1, sy: 1});
  handleMasks.push(handleMask(handle));
  selected = regions.length - 1;
  refresh();
  commit(before);
}
function transform(g, p, keepAspect) {
  const r = regions[g.index], r0 = g.r0;
  if (g.kind === "move") {
    r.tx = r0.tx + p[0] - g.start[0]; r.ty = r0.ty + p[1] - g.start[1];
  } else if (g.kind === "rotate") {
    const a0 = Math.atan2(g.start[1] - g.c[1], g.start[0] - g.c[0]), a1 = Math.atan2(p[1] - g.c[1], p[0] - g.c[0]);
    r.angle = r0.angle + a1 - a0;
  } else if (g.kind === "corner") {  // perspective: this corner alone follows the pointer
    const quad = corners(r0), back = invert(affine(r0));
    quad[g.corner] = p;
    if (convex(quad)) r.persp = homography(boxCorners(r0), quad.map(q => apply(back, q)));
  } else {  // scale about the centre, in the region's own (rotated) frame
    const local = q => { const dx = q[0] - g.c[0], dy = q[1] - g.c[1], c = Math.cos(r0.angle), s = Math.sin(r0.angle);
                         return [c * dx + s * dy, -s * dx + c * dy]; };
    const a = local(g.start), b = local(p);
    let fx = Math.abs(a[0]) > 1 ? b[0] / a[0] : 1, fy = Math.abs(a[1]) > 1 ? b[1] / a[1] : 1;
    if (keepAspect) fx = fy = Math.max(fx, fy);
    r.sx = Math.max(0.05, r0.sx * fx); r.sy = Math.max(0.05, r0.sy * fy);
  }
}

// -- keys and tools ----------------------------------------------------------------------------------------
element.addEventListener("keydown", ev => {
  const key = ev.key.toLowerCase();
  if ((ev.key === "Delete" || ev.key === "Backspace") && selected >= 0) {
    const before = snapshot();
    regions.splice(selected, 1); handleMasks.splice(selected, 1); selected = -1;
    refresh(); commit(before);
  } else if ((ev.ctrlKey || ev.metaKey) && key === "z") {
    const [from, to] = ev.shiftKey ? [redo, undo] : [undo, redo];
    if (!from.length) return;
    to.push(snapshot()); restore(from.pop()); refresh(); commit();
  } else if (ev.key === "Enter" && draft && tool === "polygon") finish();
  else if (ev.key === "[" || ev.key === "]") {  // the slider keeps the radius in its range
    brushSize.value = Number(brushSize.value) + (ev.key === "]" ? BRUSH_STEP : -BRUSH_STEP); draw();
  }
  else if (ev.key === "Escape") { draft = null; selected = -1; draw(); }
  else return;
  ev.preventDefault();
});
element.querySelectorAll("button[data-tool]").forEach(b => b.addEventListener("click", () => {
  tool = b.dataset.tool; draft = null;
  element.querySelectorAll("button[data-tool]").forEach(o => o.classList.toggle("rd-on", o === b));
}));

// -- what the server sends: a new photo, or an edit's result (shown only if it is of the latest request) ----
function load(msg) {
  const img = new Image();
  img.onload = () => {
    photo = img;
    const width = Math.min(element.clientWidth || img.width, 720, img.width * 2);
    canvas.width = Math.round(width); canvas.height = Math.round(width * img.height / img.width);
    const c = new OffscreenCanvas(img.width, img.height), g = c.getContext("2d");
    g.drawImage(img, 0, 0);
    original = g.getImageData(0, 0, img.width, img.height);
    regions = []; handleMasks = []; undo = []; redo = []; selected = -1; seq = 0; shown = 0; request = "";
    resultImg.removeAttribute("src"); resultImg.dataset.seq = "";
    refresh();
    info.textContent = "Select a region: lasso, rectangle, ellipse, polygon or brush; then drag it, its corners " +
                       "(Ctrl or Alt: one corner), its round grip.";
  };
  img.src = msg.photo;
}
watch("value", () => {
  let msg;
  try { msg = JSON.parse(props.value); } catch (e) { return; }
  if (msg.photo) load(msg);
  if ("live" in msg) advise(msg);
  if (msg.tab === tab) replies += 1;  // one per edit the server ran for this tab
  if (msg.result && msg.tab === tab && msg.seq === seq && msg.seq > shown) {
    shown = msg.seq;
    resultImg.src = msg.result; resultImg.dataset.seq = String(msg.seq);
  }
  if (msg.message && msg.tab === tab) info.textContent = msg.seq === seq ? msg.message : info.textContent;
  // the server's message took the value's place; a release still queued in the page must send the latest request
  if (request && !msg.photo) props.value = request;
});
canvas.tabIndex = 0;
// for tests and scripts: the preview at photo size as a PNG data URL, and the regions as the server gets them
canvas.regiondrag = {
  previewPNG() { const c = new OffscreenCanvas(photo.width, photo.height); c.getContext("2d").putImageData(preview, 0, 0);
                 return c.convertToBlob().then(b => new Promise(ok => { const f = new FileReader(); f.onload = () => ok(f.result); f.readAsDataURL(b); })); },
  regions() { return regions.map(r => ({...r, matrix: matrix(r)})); },
  seq() { return seq; },
  shown() { return shown; },
  replies() { return replies; },
  grips() { return selected < 0 ? null : {corners: corners(regions[selected]), rotate: rotationGrip(regions[selected]),
                                         centre: apply(matrix(regions[selected]), centre(regions[selected]))}; },
  frame() { refresh(); },
};
