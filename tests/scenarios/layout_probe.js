// Measures every inline SVG of the page as Chromium laid it out, and writes what is
// wrong as JSON into a pre element, id layout-report (tests/scenarios/tour_browser.py reads it back
//   overlap  two text boxes cover each other (more than SLACK px both ways)
//   cut      a text box reaches past the SVG's edges (its viewBox, as drawn)
//   arrow    an arrow (a line or path with marker-end) ends, or bends, outside the
//            drawing (its viewBox)
//   crossed  a line runs through a text box that is not in the line's own group
// The report also counts what it measured, so a probe that found nothing to measure
// cannot pass silently.
(function () {
  const SLACK = 1.0;
  const problems = [];
  let texts = 0, arrows = 0, strokes = 0;
  const svgs = Array.from(document.querySelectorAll("svg"));
  const label = (svg, i) => {
    const t = svg.querySelector(":scope > title");
    return `svg ${i} (${t ? t.textContent : svg.getAttribute("class") || "untitled"})`;
  };
  const overlap = (a, b) =>
    Math.min(a.right, b.right) - Math.max(a.left, b.left) > SLACK &&
    Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top) > SLACK;
  svgs.forEach((svg, i) => {
    const name = label(svg, i);
    const edge = svg.getBoundingClientRect();
    const boxes = Array.from(svg.querySelectorAll("text"))
      .filter((t) => t.textContent.trim() !== "")
      .map((t) => ({ text: t.textContent, r: t.getBoundingClientRect(), el: t }));
    texts += boxes.length;
    for (const b of boxes) {
      if (b.r.left < edge.left - SLACK || b.r.right > edge.right + SLACK ||
          b.r.top < edge.top - SLACK || b.r.bottom > edge.bottom + SLACK) {
        problems.push({ kind: "cut", svg: name, text: b.text });
      }
    }
    for (let a = 0; a < boxes.length; a++) {
      for (let b = a + 1; b < boxes.length; b++) {
        if (overlap(boxes[a].r, boxes[b].r)) {
          problems.push({ kind: "overlap", svg: name, text: boxes[a].text,
                          other: boxes[b].text });
        }
      }
    }
    const vb = svg.viewBox.baseVal;
    const inside = (x, y) => x >= vb.x && x <= vb.x + vb.width &&
                             y >= vb.y && y <= vb.y + vb.height;
    for (const el of svg.querySelectorAll("[marker-end]")) {
      arrows += 1;
      let x, y;
      if (el.tagName === "line") {
        x = el.x2.baseVal.value; y = el.y2.baseVal.value;
      } else {
        const p = el.getPointAtLength(el.getTotalLength());
        x = p.x; y = p.y;
      }
      const box = el.getBBox();
      if (!inside(x, y) || !inside(box.x, box.y) ||
          !inside(box.x + box.width, box.y + box.height)) {
        problems.push({ kind: "arrow", svg: name, text: el.closest("g")?.textContent || "",
                        at: [x, y] });
      }
    }
    for (const el of svg.querySelectorAll("line")) {
      strokes += 1;
      const w = Math.max(1, parseFloat(el.getAttribute("stroke-width") || "1") / 2);
      const r0 = el.getBoundingClientRect();
      const r = { left: r0.left - w, right: r0.right + w, top: r0.top, bottom: r0.bottom };
      const own = el.closest("g");
      for (const b of boxes) {
        if (own && own.contains(b.el)) continue;
        if (overlap(r, b.r)) {
          problems.push({ kind: "crossed", svg: name, text: b.text,
                          other: own ? own.getAttribute("class") : "" });
        }
      }
    }
  });
  const pre = document.createElement("pre");
  pre.id = "layout-report";
  pre.textContent = JSON.stringify({ svgs: svgs.length, texts, arrows, strokes, problems });
  document.body.appendChild(pre);
})();
