/* fusion-model CT viewer, on NiiVue (vendored: static/niivue/). One viewer per element with class
   "fm-viewer" holding a <canvas> and a JSON spec in a <script type="application/json" class="fm-spec">:
     {"phases": [{"name": "venous", "url": "..."} or {"name": ..., "base64": "..."}],
      "outline": {"url"|"base64"}, "saliency": {"url"|"base64"} (optional)}
   The outline image holds the lesion's contour (drawn on top, the lesion's own pixels stay visible).
   Every phase is loaded once and shown one at a time (buttons, or keys 1-4); the mouse wheel or the
   up/down arrow keys scroll the slices; right-drag sets window/level, or a preset; the outline and the
   saliency map are toggled (buttons, or keys o / s); "3 planes" adds the coronal and sagittal views (key p). State for tests: element.fmState. */
(function () {
  "use strict";
  var PRESETS = {"soft tissue": [40, 400], "adrenal": [40, 250], "wide": [60, 600], "bone": [400, 1800]};

  function load(entry, colormap, opacity, calMin, calMax) {
    var options = {name: (entry.name || "image") + ".nii.gz", colormap: colormap, opacity: opacity,
                   cal_min: calMin, cal_max: calMax, trustCalMinMax: calMin !== undefined};
    if (entry.base64) {
      options.base64 = entry.base64;
      return niivue.NVImage.loadFromBase64(options);
    }
    options.url = entry.url;
    return niivue.NVImage.loadFromUrl(options);
  }

  function button(parent, label, title, onClick) {
    var b = document.createElement("button");
    b.type = "button"; b.textContent = label; b.title = title; b.className = "fm-btn";
    b.addEventListener("click", function (e) { e.preventDefault(); onClick(); });
    parent.appendChild(b);
    return b;
  }

  async function start(root) {
    var spec = JSON.parse(root.querySelector("script.fm-spec").textContent);
    var canvas = root.querySelector("canvas");
    var state = {ready: false, phase: null, outline: true, saliency: false, planes: false, window: "soft tissue",
                 error: null};
    root.fmState = state;
    try {
      var nv = new niivue.Niivue({backColor: [0, 0, 0, 1], show3Dcrosshair: false, crosshairWidth: 0,
                                  isColorbar: false, dragAndDropEnabled: false, isRadiologicalConvention: true,
                                  multiplanarShowRender: 0,  // three planes, no 3D rendering
                                  logLevel: "error"});
      await nv.attachToCanvas(canvas);
      nv.setSliceType(nv.sliceTypeAxial);
      var preset = PRESETS[state.window];
      var phases = await Promise.all(spec.phases.map(function (p) {
        return load(p, "gray", 1.0, preset[0] - preset[1] / 2, preset[0] + preset[1] / 2);
      }));
      if (spec.outline) { spec.outline.name = spec.outline.name || "outline"; }
      if (spec.saliency) { spec.saliency.name = spec.saliency.name || "saliency"; }
      var outline = spec.outline ? await load(spec.outline, "red", 0.9, 0.5, 1.0) : null;
      var saliency = spec.saliency ? await load(spec.saliency, "warm", 0.0, 20, 100) : null;  // percent of peak
      // every phase stays loaded; the one shown is moved to the bottom of the stack, the others are hidden
      phases.forEach(function (img, i) { nv.addVolume(img); });
      phases.forEach(function (img, i) { if (i > 0) { nv.setOpacity(nv.volumes.indexOf(img), 0.0); } });
      if (outline) { nv.addVolume(outline); }
      if (saliency) { nv.addVolume(saliency); }
      var current = 0;
      var bar = root.querySelector(".fm-controls") || root.appendChild(document.createElement("div"));
      bar.className = "fm-controls";
      var phaseButtons = spec.phases.map(function (p, i) {
        return button(bar, p.name, "show the " + p.name + " phase (key " + (i + 1) + ")", function () { setPhase(i); });
      });
      function setPhase(i) {
        if (i === current || i < 0 || i >= phases.length) { return; }
        var position = nv.scene.crosshairPos.slice();
        nv.setVolume(phases[i], 0);
        phases.forEach(function (img, k) { nv.setOpacity(nv.volumes.indexOf(img), k === i ? 1.0 : 0.0); });
        current = i;
        nv.scene.crosshairPos = position;
        nv.updateGLVolume();
        state.phase = spec.phases[i].name;
        phaseButtons.forEach(function (b, k) { b.classList.toggle("on", k === i); });
      }
      Object.keys(PRESETS).forEach(function (name) {
        button(bar, name, "window/level preset (L " + PRESETS[name][0] + ", W " + PRESETS[name][1] + ")", function () {
          var p = PRESETS[name];
          phases.forEach(function (img) { img.cal_min = p[0] - p[1] / 2; img.cal_max = p[0] + p[1] / 2; });
          nv.updateGLVolume();
          state.window = name;
        });
      });
      // an overlay (outline, saliency) shown at its opacity or hidden; its button lit while shown
      function overlayToggle(img, key, opacity, label, title) {
        if (!img) { return function () {}; }
        var b = button(bar, label, title, function () { toggle(); });
        function toggle() {
          state[key] = !state[key];
          nv.setOpacity(nv.volumes.indexOf(img), state[key] ? opacity : 0.0);
          b.classList.toggle("on", state[key]);
        }
        b.classList.toggle("on", state[key]);
        return toggle;
      }
      var toggleOutline = overlayToggle(outline, "outline", 0.9, "outline", "show or hide the lesion outline (key o)");
      var toggleSaliency = overlayToggle(saliency, "saliency", 0.5, "saliency",
                                         "show or hide where the network looked (key s)");
      function scroll(step) { nv.moveCrosshairInVox(0, 0, step); state.slice = nv.frac2vox(nv.scene.crosshairPos)[2]; }
      var planes = button(bar, "3 planes", "axial only, or axial + coronal + sagittal (key p)", togglePlanes);
      function togglePlanes() {
        state.planes = !state.planes;
        nv.setSliceType(state.planes ? nv.sliceTypeMultiplanar : nv.sliceTypeAxial);
        planes.classList.toggle("on", state.planes);
      }
      button(bar, "\u25b2", "next slice (arrow up or mouse wheel)", function () { scroll(1); });
      button(bar, "\u25bc", "previous slice (arrow down or mouse wheel)", function () { scroll(-1); });
      root.tabIndex = 0;
      root.addEventListener("keydown", function (e) {
        if (e.key >= "1" && e.key <= "9") { setPhase(Number(e.key) - 1); }
        else if (e.key === "o") { toggleOutline(); }
        else if (e.key === "s") { toggleSaliency(); }
        else if (e.key === "p") { togglePlanes(); }
        else if (e.key === "ArrowUp") { scroll(1); e.preventDefault(); }
        else if (e.key === "ArrowDown") { scroll(-1); e.preventDefault(); }
      });
      state.phase = spec.phases[0].name;
      phaseButtons[0].classList.add("on");
      state.setPhase = setPhase; state.toggleOutline = toggleOutline; state.toggleSaliency = toggleSaliency;
      state.scroll = scroll;
      state.slice = nv.frac2vox(nv.scene.crosshairPos)[2];
      state.volumes = function () { return nv.volumes.map(function (v) { return v.name; }); };
      state.opacity = function (name) {
        var v = nv.volumes.find(function (x) { return x.name === name + ".nii.gz"; }); return v ? v.opacity : null;
      };
      state.readyAt = performance.now();  // ms since the page's navigation started
      state.ready = true;
    } catch (err) {
      state.error = String(err && err.message || err);
      var note = document.createElement("p");
      note.className = "fm-viewer-error";
      note.textContent = "The image viewer could not start (" + state.error + "); this browser may lack WebGL2.";
      root.appendChild(note);
      if (window.console) { console.error("fm-viewer: " + state.error); }
    }
  }

  function startAll() { document.querySelectorAll(".fm-viewer").forEach(start); }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", startAll); }
  else { startAll(); }
})();
