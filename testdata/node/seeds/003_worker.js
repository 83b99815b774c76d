const http = require('http');


const server = http.createServer(function(req, res) {
// ‘request’ 监听器
res.end('handled by worker n');
// throw new Error('error');
})

let worker;
process.on('message', function(msg, handle){
if(msg === 'server') {
worker = handle;
worker.on('connection', function(socket){
server.emit('connection', socket);
})
}

})


process.on('uncaughtException', function(err) {
console.error('uncaughtException err:', err.message, ', worker进程将重启');
// 通知master创建新的worker
process.send('new_worker', worker);
// 停止接收新的连接
worker.close(function() {
// 所有已有连接断开后,退出进程
process.exit(1);
});
});
