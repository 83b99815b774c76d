module github.com/prefork/prefork

go 1.25
