// Pointer input on the image: with the prompt tool a click adds a foreground point, a right
// click (or Shift+click) a background point and a drag a box; with the brush or eraser a
// drag paints; Alt+click selects a mask; the wheel zooms; a middle drag or Space+drag pans.

const DRAG_PX = 5;

/** handlers: {tool() -> "prompt" | "brush" | "eraser", point(x, y, label), box(box),
 * rubber(box | null), strokeStart(p), strokeMove(p), strokeEnd(), hover(p | null),
 * select(p)}; points are fractional stored-image pixels. */
export function bindPointer(viewport, stage, handlers) {
  let gesture = null;
  let spaceHeld = false;
  window.addEventListener("keydown", (e) => {
    if (e.code === "Space" && e.target === document.body) spaceHeld = true;
  });
  window.addEventListener("keyup", (e) => {
    if (e.code === "Space") spaceHeld = false;
  });
  viewport.addEventListener("contextmenu", (e) => e.preventDefault());
  viewport.addEventListener(
    "wheel",
    (e) => {
      e.preventDefault();
      stage.zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX, e.clientY);
    },
    { passive: false },
  );

  viewport.addEventListener("pointerdown", (e) => {
    viewport.setPointerCapture(e.pointerId);
    const at = stage.toImage(e.clientX, e.clientY);
    const tool = handlers.tool();
    if (e.button === 1 || spaceHeld) gesture = { kind: "pan", x: e.clientX, y: e.clientY };
    else if (e.button === 0 && e.altKey) handlers.select(at);
    else if (tool === "prompt")
      gesture = {
        kind: "prompt",
        at,
        x: e.clientX,
        y: e.clientY,
        background: e.button === 2 || e.shiftKey,
      };
    else if (e.button === 0) {
      gesture = { kind: "stroke" };
      handlers.strokeStart(at);
    }
  });

  viewport.addEventListener("pointermove", (e) => {
    const at = stage.toImage(e.clientX, e.clientY);
    handlers.hover(at);
    if (!gesture) return;
    if (gesture.kind === "pan") {
      stage.panBy(e.clientX - gesture.x, e.clientY - gesture.y);
      Object.assign(gesture, { x: e.clientX, y: e.clientY });
    } else if (gesture.kind === "stroke") handlers.strokeMove(at);
    else if (!gesture.background && (gesture.dragged || far(gesture, e))) {
      gesture.dragged = true;
      handlers.rubber(boxOf(gesture.at, at));
    }
  });

  viewport.addEventListener("pointerup", (e) => {
    const done = gesture;
    gesture = null;
    if (!done) return;
    const at = stage.toImage(e.clientX, e.clientY);
    if (done.kind === "stroke") handlers.strokeEnd();
    if (done.kind !== "prompt") return;
    handlers.rubber(null);
    if (done.dragged) handlers.box(boxOf(done.at, at));
    else handlers.point(done.at[0], done.at[1], done.background ? 0 : 1);
  });
  viewport.addEventListener("pointerleave", () => handlers.hover(null));
}

function far(gesture, e) {
  return Math.hypot(e.clientX - gesture.x, e.clientY - gesture.y) > DRAG_PX;
}

function boxOf([ax, ay], [bx, by]) {
  return [Math.min(ax, bx), Math.min(ay, by), Math.max(ax, bx), Math.max(ay, by)];
}
