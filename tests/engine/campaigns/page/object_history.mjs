import { ObjectEditor } from "../../../../engine/campaigns/static/js/object.js";
// A decoder that records its calls: masks 4 x 2 x 3 where token t covers t + 1 pixels,
// low-res 4 x 1 x 2 holding the call number, IoU favouring token 2.
export async function main() {
  const calls = [];
  const decode = async (prompt, maskInput) => {
    calls.push({
      points: prompt.points.length,
      box: prompt.box,
      maskInput: maskInput && Array.from(maskInput),
    });
    const n = calls.length;
    const masks = new Float32Array(4 * 6).fill(-1);
    for (let t = 0; t < 4; t += 1) for (let i = 0; i <= t; i += 1) masks[t * 6 + i] = 1;
    const lowRes = new Float32Array(8);
    for (let t = 0; t < 4; t += 1) lowRes.fill(10 * n + t, 2 * t, 2 * t + 2);
    return {
      masks,
      iou: Float32Array.of(0.5, 0.6, 0.9, 0.7),
      lowRes,
      size: [2, 3],
      lowSize: [1, 2],
    };
  };
  const editor = new ObjectEditor({ decode, work: [2, 3], scale: [1, 1], onChange() {} });
  const count = () => editor.mask().reduce((a, b) => a + b, 0);
  const seen = {};
  editor.add({ kind: "point", x: 1, y: 1, label: 1 });
  await editor.queue;
  seen.first = count(); // best multimask output: token 2 (3 pixels)
  editor.cycle();
  seen.cycled = count(); // next by IoU: token 3 (4 pixels)
  editor.add({ kind: "point", x: 2, y: 0, label: 0 });
  await editor.queue;
  seen.second = count(); // two points: token 0 (1 pixel)
  editor.add({ kind: "stroke", stroke: { mode: "brush", radius: 0.5, points: [[2.5, 1.5]] } });
  seen.stroked = count();
  editor.undo();
  seen.undoStroke = count();
  editor.undo();
  seen.undoPoint = count();
  editor.redo();
  await editor.queue;
  seen.redo = count();
  seen.calls = calls;
  seen.clicks = editor.clicks;
  seen.strokes = editor.strokes;
  return seen;
}
