module github.com/prefork/prefork/reliability

go 1.25

require github.com/prefork/prefork v0.0.0

replace github.com/prefork/prefork => ../
