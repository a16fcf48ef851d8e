// nodedemo: a small HTTP app that writes one log line per start and per request under
// /logs/<project>/, so a test can see on which filesystem the log landed.
const fs = require("fs");
const http = require("http");
const path = require("path");

const project = process.env.PROJECT_NAME || "nodedemo";
const port = Number(process.env.PORT || 3000);
const logDir = path.join("/logs", project);
const logFile = path.join(logDir, "app.log");

function writeLog(message) {
  fs.mkdirSync(logDir, { recursive: true });
  fs.appendFileSync(logFile, `${new Date().toISOString()} ${message}\n`);
}

const server = http.createServer((request, response) => {
  writeLog(`${request.method} ${request.url}`);
  response.writeHead(200, { "Content-Type": "text/plain" });
  response.end(`${project} is running (NODE_ENV=${process.env.NODE_ENV || "development"})\n`);
});

server.listen(port, () => {
  writeLog(`listening on port ${port} with NODE_ENV=${process.env.NODE_ENV || "development"}`);
});
