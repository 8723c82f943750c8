/** Quire's TypeScript client: OT (SPEC §3), the client discipline (§4), the WebSocket protocol (§5). */
export * from "./ot.js";
export * from "./protocol.js";
export { ClientCore, splitOp, DEFAULT_MAX_OP_BYTES, type CoreEvent, type CoreOptions } from "./core.js";
export { diff, threeWay } from "./diff.js";
export { UndoStack, type UndoOptions } from "./undo.js";
export {
  Connection,
  type ConnectionEvents,
  type ConnectionOptions,
  type RemotePresence,
  type SocketLike,
  type Status,
} from "./connection.js";
