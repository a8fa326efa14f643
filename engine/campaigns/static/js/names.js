// The campaign's names (image statuses, mask origins and states, stages, event kinds, ...)
// as the server defines them (engine/campaigns/state.py) and sends them with /api/me: the
// page compares with these instead of spelling states itself. Groups and keys are the
// Python ones: names.stage.SEMI, names.mask_origin.PREFILLED, names.mask_state.REJECTED.

export const names = {};

/** Take the server's names (once, at sign-in, before anything reads them). */
export function useNames(served) {
  for (const [group, members] of Object.entries(served))
    names[group] = Object.freeze({ ...members });
}
