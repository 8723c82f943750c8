// ShareDB 7 with its in-memory database (it keeps nothing on disk), over
// WebSocket, with the code-point text type (ot-text-unicode): the peer Quire
// is measured against. Prints "listening on PORT".
import http from "node:http";
import ShareDB from "sharedb";
import WebSocketJSONStream from "@teamwork/websocket-json-stream";
import { WebSocketServer } from "ws";
import { type as textUnicode } from "ot-text-unicode";

ShareDB.types.register(textUnicode);
const backend = new ShareDB();
const server = http.createServer();
const wss = new WebSocketServer({ server });
wss.on("connection", (ws) => backend.listen(new WebSocketJSONStream(ws)));
server.listen(Number(process.argv[2] ?? 0), "127.0.0.1", () => {
  console.log(`listening on ${server.address().port}`);
});
